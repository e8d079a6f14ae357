"""Unit tests of zooscope.layers: which tensors are layers, their order, names and hashes."""
import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from zooscope.layers import layers_from_module, layers_from_state_dict, natural_key
from zooscope.tensors import num_parameters, tensor_sha256


def summary(layer_list):
    return [(l.name, l.tensor, l.type, l.shape, l.depth) for l in layer_list.layers]


class Mixed(nn.Module):
    """Every analysed module type, next to modules whose weights are never analysed."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.conv1 = nn.Conv1d(8, 6, 3)
        self.norm = nn.LayerNorm(6)
        self.conv2 = nn.Conv2d(6, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(4, 3))


def test_module_tree_types_order_and_shapes():
    torch.manual_seed(0)
    assert summary(layers_from_module(Mixed())) == [
        ("embed", "embed.weight", "Embedding", [20, 8], 0),
        ("conv1", "conv1.weight", "Conv1d", [6, 8, 3], 1),
        ("conv2", "conv2.weight", "Conv2d", [4, 6, 3, 3], 2),
        ("head.1", "head.1.weight", "Linear", [3, 4], 3),
    ]


def test_module_tree_tensors_keep_their_dtype_and_hash_as_float32():
    torch.manual_seed(0)
    model = Mixed().to(torch.float64)
    result = layers_from_module(model)
    for layer in result.layers:
        tensor = result.tensors[layer.tensor]
        assert tensor.dtype == torch.float64 and result.dtypes[layer.tensor] == "F64"
        np.testing.assert_array_equal(tensor.numpy(), model.get_parameter(layer.tensor).detach().numpy())
        expected = model.get_parameter(layer.tensor).detach().float().numpy()
        assert layer.sha256 == hashlib.sha256(np.ascontiguousarray(expected).tobytes()).hexdigest()


class Tied(nn.Module):
    """A language-model head tied to the embedding, and one Linear module used twice."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 6)
        self.shared = nn.Linear(6, 6)
        self.block = nn.Sequential(self.shared, nn.ReLU(), self.shared)
        self.lm_head = nn.Linear(6, 30, bias=False)
        self.lm_head.weight = self.embed.weight


def test_tied_weights_are_counted_once():
    model = Tied()
    result = layers_from_module(model)
    assert [l.name for l in result.layers] == ["embed", "shared"]
    assert set(result.tensors) == {"embed.weight", "shared.weight"}
    assert num_parameters(model.parameters()) == 30 * 6 + 6 * 6 + 6


def test_tied_tensors_in_a_state_dict_are_counted_once():
    weight = torch.randn(30, 6)
    state = {"embed.weight": weight, "lm_head.weight": weight, "view.weight": weight[:10]}
    result = layers_from_state_dict(state)
    assert summary(result) == [
        ("embed", "embed.weight", "Embedding", [30, 6], 0),
        ("view", "view.weight", "Linear", [10, 6], 1),  # a different view is its own tensor
    ]
    assert num_parameters(state.values()) == 30 * 6 + 10 * 6


def test_state_dict_typing_by_name_and_rank():
    state = {
        "blocks.10.fc.weight": torch.zeros(3, 5),
        "blocks.2.fc.weight": torch.zeros(5, 4),
        "blocks.2.fc.bias": torch.zeros(5),
        "Word_Embeddings.weight": torch.zeros(11, 4, dtype=torch.float16),
        "attn.in_proj_weight": torch.zeros(12, 4),
        "conv.weight": torch.zeros(4, 2, 3),
        "stem.weight": torch.zeros(4, 3, 3, 3),
        "conv3d.weight": torch.zeros(2, 2, 2, 2, 2),  # rank 5: no layer type
        "norm.weight": torch.zeros(4),
        "scale.weight": torch.tensor(1.0),
        "codebook.weight": torch.zeros(4, 4, dtype=torch.int64),
        "proj.weights_mask": torch.zeros(4, 4),  # does not end in "weight"
        "steps": torch.tensor(3),
    }
    assert summary(layers_from_state_dict(state)) == [
        ("Word_Embeddings", "Word_Embeddings.weight", "Embedding", [11, 4], 0),
        # a MultiheadAttention's fused in_proj_weight: its q, k and v projections, as from its module
        ("attn.q_proj", "attn.q_proj.weight", "Linear", [4, 4], 1),
        ("attn.k_proj", "attn.k_proj.weight", "Linear", [4, 4], 2),
        ("attn.v_proj", "attn.v_proj.weight", "Linear", [4, 4], 3),
        ("blocks.2.fc", "blocks.2.fc.weight", "Linear", [5, 4], 4),
        ("blocks.10.fc", "blocks.10.fc.weight", "Linear", [3, 5], 5),
        ("conv", "conv.weight", "Conv1d", [4, 2, 3], 6),
        ("stem", "stem.weight", "Conv2d", [4, 3, 3, 3], 7),
    ]


def test_half_precision_weights_stay_half_and_hash_as_float32():
    weight = torch.randn(4, 3).to(torch.bfloat16)
    result = layers_from_state_dict({"fc.weight": weight})
    assert result.tensors["fc.weight"].dtype == torch.bfloat16 and result.dtypes["fc.weight"] == "BF16"
    assert torch.equal(result.tensors["fc.weight"], weight)
    assert result.layers[0].sha256 == hashlib.sha256(weight.float().numpy().tobytes()).hexdigest()


def test_names_are_file_safe_and_unique():
    state = {
        "a b/c.weight": torch.zeros(2, 2),
        "a_b_c.weight": torch.zeros(2, 2),
        "A_B_C.weight": torch.zeros(2, 2),  # unique also on case-insensitive file systems
        "..weight": torch.zeros(2, 2),
        "weight": torch.zeros(2, 2),
    }
    names = [l.name for l in layers_from_state_dict(state).layers]
    assert sorted(names) == sorted(["_", "A_B_C", "a_b_c_2", "a_b_c_3", "weight"])
    assert len({n.lower() for n in names}) == len(names)
    assert all(set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") for n in names)


def test_natural_key_orders_numbers_numerically():
    keys = ["h.10.w", "h.2.w", "h.1.w", "emb", "h.2.a"]
    assert sorted(keys, key=natural_key) == ["emb", "h.1.w", "h.2.a", "h.2.w", "h.10.w"]


def test_tensor_sha256_uses_contiguous_float32_bytes():
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    transposed = base.t()  # not contiguous
    expected = hashlib.sha256(np.ascontiguousarray(base.numpy().T, dtype=np.float32).tobytes()).hexdigest()
    assert tensor_sha256(transposed) == expected


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
def test_tensor_sha256_streams_blocks_into_the_digest_of_the_whole_widening(dtype, monkeypatch):
    """Widened a few entries at a time (here 7, so the last block is partial), numpy and torch
    tensors hash to the sha256 of their whole float32 widening, computed here in one piece."""
    import ml_dtypes

    from zooscope import tensors

    monkeypatch.setattr(tensors, "HASH_BLOCK_ENTRIES", 7)
    values = np.random.default_rng(0).standard_normal((5, 9))
    array = values.astype(getattr(ml_dtypes, dtype, None) or np.dtype(dtype))
    expected = hashlib.sha256(np.asarray(array, dtype=np.float32).tobytes()).hexdigest()
    assert tensor_sha256(array) == tensor_sha256(array.T.copy().T) == expected
    assert tensor_sha256(torch.from_numpy(values).to(getattr(torch, dtype))) == expected
    assert tensor_sha256(np.asarray(array, dtype=np.float32)) == expected  # float32: in place


# --------------------------------------------------------------------------- real architectures
# Expected layer lists are counted by hand from each architecture's definition (registration
# order of its modules), not from the code's output.


def hand_summary(layer_list):
    return [(l.name, l.type, l.shape) for l in layer_list.layers]


def test_gpt2_conv1d_is_a_transposed_linear_and_the_tied_head_counts_once():
    import transformers
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    expected = [("transformer.wte", "Embedding", [100, 32]), ("transformer.wpe", "Embedding", [16, 32])]
    for block in range(2):
        h = f"transformer.h.{block}"
        expected += [  # Conv1D weights are (in, out); recorded as (out, in); n_inner = 4 * n_embd
            (f"{h}.attn.c_attn", "Linear", [96, 32]),
            (f"{h}.attn.c_proj", "Linear", [32, 32]),
            (f"{h}.mlp.c_fc", "Linear", [128, 32]),
            (f"{h}.mlp.c_proj", "Linear", [32, 128]),
        ]
    result = layers_from_module(model)
    assert hand_summary(result) == expected  # lm_head is wte (tied): not a second layer
    assert [l.depth for l in result.layers] == list(range(10))
    c_attn = model.transformer.h[0].attn.c_attn.weight
    assert list(c_attn.shape) == [32, 96]
    np.testing.assert_array_equal(result.tensors["transformer.h.0.attn.c_attn.weight"].numpy(),
                                  c_attn.detach().numpy().T)
    # the recorded matrix is the linear map: y = W x + b
    x = torch.randn(5, 32)
    with torch.no_grad():
        y = model.transformer.h[0].attn.c_attn(x)
    w, b = result.tensors["transformer.h.0.attn.c_attn.weight"], model.transformer.h[0].attn.c_attn.bias
    torch.testing.assert_close(y, x @ w.T + b.detach())


def test_bert_layers():
    import transformers
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16, type_vocab_size=2)
    expected = [
        ("embeddings.word_embeddings", "Embedding", [100, 32]),
        ("embeddings.position_embeddings", "Embedding", [16, 32]),
        ("embeddings.token_type_embeddings", "Embedding", [2, 32]),
    ]
    for i in range(2):
        layer = f"encoder.layer.{i}"
        expected += [
            (f"{layer}.attention.self.query", "Linear", [32, 32]),
            (f"{layer}.attention.self.key", "Linear", [32, 32]),
            (f"{layer}.attention.self.value", "Linear", [32, 32]),
            (f"{layer}.attention.output.dense", "Linear", [32, 32]),
            (f"{layer}.intermediate.dense", "Linear", [64, 32]),
            (f"{layer}.output.dense", "Linear", [32, 64]),
        ]
    expected.append(("pooler.dense", "Linear", [32, 32]))
    assert hand_summary(layers_from_module(transformers.BertModel(config))) == expected


def test_resnet18_layers():
    import torchvision
    expected = [("conv1", "Conv2d", [64, 3, 7, 7])]
    channels_in = 64
    for stage, channels in enumerate([64, 128, 256, 512], start=1):
        for block in range(2):  # BasicBlock: conv1, bn1, relu, conv2, bn2, downsample
            name = f"layer{stage}.{block}"
            first_in = channels_in if block == 0 else channels
            expected += [(f"{name}.conv1", "Conv2d", [channels, first_in, 3, 3]),
                         (f"{name}.conv2", "Conv2d", [channels, channels, 3, 3])]
            if block == 0 and stage > 1:  # stride 2 and more channels: a 1x1 projection
                expected.append((f"{name}.downsample.0", "Conv2d", [channels, channels_in, 1, 1]))
        channels_in = channels
    expected.append(("fc", "Linear", [1000, 512]))
    assert len(expected) == 21
    assert hand_summary(layers_from_module(torchvision.models.resnet18(weights=None))) == expected


def test_vgg11_layers():
    import torchvision
    # cfg "A": 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M; each conv is followed by a
    # ReLU, so the convs sit at these indices of `features`.
    convs = [(0, 3, 64), (3, 64, 128), (6, 128, 256), (8, 256, 256),
             (11, 256, 512), (13, 512, 512), (16, 512, 512), (18, 512, 512)]
    expected = [(f"features.{i}", "Conv2d", [out, cin, 3, 3]) for i, cin, out in convs]
    expected += [("classifier.0", "Linear", [4096, 512 * 7 * 7]), ("classifier.3", "Linear", [4096, 4096]),
                 ("classifier.6", "Linear", [1000, 4096])]
    assert hand_summary(layers_from_module(torchvision.models.vgg11(weights=None))) == expected


def test_multihead_attention_is_split_into_q_k_v():
    torch.manual_seed(0)
    encoder = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16)
    result = layers_from_module(encoder)
    assert hand_summary(result) == [
        ("self_attn.q_proj", "Linear", [8, 8]),
        ("self_attn.k_proj", "Linear", [8, 8]),
        ("self_attn.v_proj", "Linear", [8, 8]),
        ("self_attn.out_proj", "Linear", [8, 8]),
        ("linear1", "Linear", [16, 8]),
        ("linear2", "Linear", [8, 16]),
    ]
    fused = encoder.self_attn.in_proj_weight.detach().numpy()
    for i, name in enumerate("qkv"):
        np.testing.assert_array_equal(result.tensors[f"self_attn.{name}_proj.weight"].numpy(), fused[8 * i: 8 * (i + 1)])


def test_multihead_attention_with_separate_key_and_value_sizes():
    attention = nn.MultiheadAttention(8, 2, kdim=5, vdim=3)
    assert hand_summary(layers_from_module(attention)) == [
        ("q_proj", "Linear", [8, 8]), ("k_proj", "Linear", [8, 5]), ("v_proj", "Linear", [8, 3]),
        ("out_proj", "Linear", [8, 8]),
    ]


@pytest.mark.parametrize("build", [
    lambda: nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16),
    lambda: nn.MultiheadAttention(8, 2, kdim=5, vdim=3),
], ids=["fused-qkv", "separate-qkv"])
def test_a_state_dict_names_attention_projections_as_its_module_tree_does(build):
    """A bare state dict (torchvision's ViT saved with torch.save, say) has no classes, but a
    MultiheadAttention's in_proj_weight (or q/k/v_proj_weight) is split and named as the module
    tree's layers are: the same layers, shapes and bytes from either route."""
    torch.manual_seed(0)
    network = build()
    from_tree, from_names = layers_from_module(network), layers_from_state_dict(network.state_dict())
    assert {(l.name, l.tensor, l.type, tuple(l.shape), l.sha256) for l in from_names.layers} == {
        (l.name, l.tensor, l.type, tuple(l.shape), l.sha256) for l in from_tree.layers}


# --------------------------------------------------------------------------- a module tree on the meta device


def gpt2_lm():
    import transformers
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16)
    return transformers.GPT2LMHeadModel(config)


# Module trees with every kind of analysed weight: fused and separate q/k/v, tied weights, every
# module type, GPT-2's Conv1D with a tied head.
EVERY_KIND_OF_TREE = pytest.mark.parametrize("build", [
    lambda: nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16),
    lambda: nn.MultiheadAttention(8, 2, kdim=5, vdim=3),
    Tied, Mixed, gpt2_lm,
], ids=["fused-qkv", "separate-qkv", "tied", "mixed", "gpt2-conv1d-tied-head"])


@EVERY_KIND_OF_TREE
def test_a_meta_module_tree_with_its_weights_read_elsewhere_gives_the_same_layers(build):
    """The hub route of large models: the tree on the meta device only types the layers, the
    values come from a checkpoint (here the real model's state dict). Both must give the same
    layer list and matrices as the real module tree."""
    torch.manual_seed(0)
    real = build()
    state = real.state_dict()
    with torch.device("meta"):
        skeleton = build()
    assert all(p.is_meta for p in skeleton.parameters())
    reads = []

    class Checkpoint(dict):
        def __getitem__(self, key):
            reads.append(key)
            return super().__getitem__(key)

    expected, result = layers_from_module(real), layers_from_module(skeleton, Checkpoint(state))
    assert result.layers == expected.layers  # names, types, shapes, depths and hashes
    for layer in expected.layers:
        np.testing.assert_array_equal(result.tensors[layer.tensor].numpy(), expected.tensors[layer.tensor].numpy())
    assert set(reads) <= set(state) and not any(key.endswith("bias") for key in reads)


@EVERY_KIND_OF_TREE
def test_module_layers_are_the_listed_layers_with_the_parameter_each_comes_from(build):
    """module_layers (what the Jacobian stage differentiates) names the layers layers_from_module
    lists, in its order, and each one's view of its parameter is the recorded matrix."""
    from zooscope.layers import module_layers

    torch.manual_seed(0)
    model = build()
    listed = layers_from_module(model)
    found = module_layers(model)
    assert [item.name for item in found] == [layer.name for layer in listed.layers]
    assert [item.weight.key for item in found] == [layer.tensor for layer in listed.layers]
    for item in found:
        matrix = item.weight.matrix(model.get_parameter(item.weight.parameter)).detach()
        torch.testing.assert_close(matrix, listed.tensors[item.weight.key], rtol=0, atol=0)


def test_checkpoint_weights_the_tree_has_no_parameter_for_are_typed_by_name_after_their_block():
    """A checkpoint in another layout than its tree (an MoE's per-expert weights, which
    transformers 5 fuses on load): the weights no parameter is read from are layers too, typed
    by name and rank, each after the tree's layer it shares the longest module path with."""
    from zooscope.tensors import RenamedTensors

    torch.manual_seed(0)
    tree = nn.ModuleDict({"embed": nn.Embedding(10, 4),
                          "blocks": nn.ModuleList([nn.ModuleDict({"attn": nn.Linear(4, 4)}) for _ in range(2)])})
    store = {key: value.detach().clone() for key, value in tree.state_dict().items()}
    extra = {"head.weight": torch.randn(10, 4), "blocks.1.moe.experts.0.w.weight": torch.randn(6, 4),
             "blocks.0.moe.experts.10.w.weight": torch.randn(6, 4), "blocks.0.moe.experts.2.w.weight": torch.randn(6, 4),
             "blocks.0.moe.embed_extra.weight": torch.randn(9, 4), "blocks.0.moe.scale": torch.randn(4),
             "blocks.0.moe.experts.2.w.bias": torch.randn(6), "counts": torch.arange(3)}
    store.update(extra)
    layers = layers_from_module(tree, RenamedTensors(store, {name: name for name in tree.state_dict()}))
    assert [layer.name for layer in layers.layers] == [
        "embed", "blocks.0.attn", "blocks.0.moe.embed_extra", "blocks.0.moe.experts.2.w", "blocks.0.moe.experts.10.w",
        "blocks.1.attn", "blocks.1.moe.experts.0.w", "head"]
    assert [layer.type for layer in layers.layers] == ["Embedding", "Linear", "Embedding"] + ["Linear"] * 5
    assert [layer.depth for layer in layers.layers] == list(range(8))
    for layer in layers.layers:  # each read from the checkpoint under its own name
        assert layer.sha256 == hashlib.sha256(store[layer.tensor].float().numpy().tobytes()).hexdigest()
        assert torch.equal(torch.as_tensor(layers.tensors[layer.tensor]), store[layer.tensor])
    # a tree without any layer of its own puts them all in name order
    empty = nn.ModuleDict({"norm": nn.LayerNorm(4)})
    only = layers_from_module(empty, RenamedTensors({**empty.state_dict(), **extra}, {n: n for n in empty.state_dict()}))
    assert [layer.name for layer in only.layers] == sorted(
        (key.removesuffix(".weight") for key in extra if key.endswith(".weight")), key=natural_key)


@pytest.mark.parametrize("names", ["parametrizations", "weight_g"])
@pytest.mark.parametrize("dim", [0, 2])
def test_a_bare_state_dict_makes_a_weight_norm_pair_into_its_weight(names, dim):
    """Without a module tree, a weight-norm direction and magnitude (``parametrizations.weight.
    original1``/``original0``, or ``weight_v``/``weight_g``) are the weight the module computes,
    under the module's ``weight`` key; the axis the norm keeps is read off the magnitude's shape."""
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    conv = weight_norm(nn.Conv1d(4, 6, 3), dim=dim)
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(torch.rand_like(conv.parametrizations.weight.original0) + 0.5)
    state = {"conv." + key: value for key, value in conv.state_dict().items()}
    if names == "weight_g":
        state = {key.replace("parametrizations.weight.original0", "weight_g")
                 .replace("parametrizations.weight.original1", "weight_v"): value for key, value in state.items()}
    layers = layers_from_state_dict(state)
    assert [(l.name, l.tensor, l.type) for l in layers.layers] == [("conv", "conv.weight", "Conv1d")]
    np.testing.assert_array_equal(np.asarray(layers.tensors["conv.weight"]), conv.weight.detach().numpy())
