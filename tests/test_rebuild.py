"""zooscope.jacobian.rebuild (a fetched train:/random: model as a module) and the jac_ join of aggregate."""
import dataclasses
import math

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from zooscope import io

from zooscope.models import architectures

from zooscope.models import catalog, digits
from zooscope.analysis.aggregate import join_jacobian
from zooscope.jacobian.rebuild import RebuildError, rebuild_module
from zooscope.sources.fetch import fetch_model


def fetched(tmp_path, source, **options):
    row = {"model": "m", "series": "s", "source": source, "accuracy": None, **options}
    fetch_model(row, tmp_path, sheet_dir=tmp_path)
    return io.read_json(tmp_path / "meta.json"), io.read_json(tmp_path / "layers.json")["layers"]


@pytest.mark.parametrize("source, options", [
    ("random:mlp", {"width": "32", "depth": "1", "seed": "3"}),
    ("train:mlp", {"width": "32", "depth": "1", "epochs": "2"}),
])
def test_rebuilt_model_is_the_fetched_one(tmp_path, source, options):
    meta, layers = fetched(tmp_path, source, **options)
    network = rebuild_module(meta, layers, tmp_path / "model.safetensors")
    assert not network.training
    # the fetched module's whole state, bit for bit: the analysed weights and the biases
    reference = rebuilt_by_hand(source, options)
    state = network.state_dict()
    assert state.keys() == reference.keys() == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    for key, value in reference.items():
        assert torch.equal(state[key], value), key
    # and it computes what the fetched model computes
    x = torch.randn(5, 64)
    reference_network = architectures.build_architecture("mlp", {"width": 32, "depth": 1})
    reference_network.load_state_dict(reference)
    assert torch.equal(network(x), reference_network.eval()(x))


def rebuilt_by_hand(source, options):
    """The model fetch builds, made here with the seeded recipe directly (no zooscope.jacobian.rebuild)."""
    kind, _ = source.split(":")
    options = dict(options)
    seed = int(options.get("seed", 0)) if kind == "random" else catalog.TRAINING_DEFAULTS["mlp"].seed
    with digits.deterministic_torch(seed, 1):
        network = architectures.build_architecture("mlp", {"width": 32, "depth": 1})
    if kind == "train":
        config = dataclasses.replace(catalog.TRAINING_DEFAULTS["mlp"], epochs=int(options["epochs"]))
        digits.train(network, config, threads=1)
    return network.state_dict()


def test_a_different_or_incomplete_model_is_refused(tmp_path):
    meta, layers = fetched(tmp_path, "random:mlp", width="32", depth="1", seed="3")
    weights = tmp_path / "model.safetensors"
    other = [{**layer, "sha256": "0" * 64} if i == 0 else layer for i, layer in enumerate(layers)]
    with pytest.raises(RebuildError, match="differ"):
        rebuild_module(meta, other, weights)
    with pytest.raises(RebuildError, match="file: model cannot be run"):
        rebuild_module({**meta, "source": "file:w.safetensors"}, layers, weights)
    # a model.safetensors with only the analysed weights (as zooscope wrote before) is refused by name
    stored = load_file(weights)
    save_file({key: value for key, value in stored.items() if key.endswith("weight")}, tmp_path / "old.safetensors")
    with pytest.raises(RebuildError, match="net.0.bias.*refetch"):
        rebuild_module(meta, layers, tmp_path / "old.safetensors")


def test_join_jacobian_adds_jac_columns_only_when_there_are_summaries():
    models = pd.DataFrame({"model": ["a", "b", "c"], "accuracy": [1.0, 2.0, 3.0]})
    same, columns = join_jacobian(models, [])
    assert same is models and columns == []
    joined, columns = join_jacobian(models, [{"model": "b", "metrics": {"jac_alpha": 2.5, "jac_rank": 7}}])
    assert columns == ["jac_alpha", "jac_rank"]
    assert joined.loc[1, "jac_alpha"] == 2.5 and joined.loc[1, "jac_rank"] == 7
    assert math.isnan(joined.loc[0, "jac_alpha"]) and math.isnan(joined.loc[2, "jac_rank"])
    with pytest.raises(ValueError, match="not in the table"):
        join_jacobian(models, [{"model": "z", "metrics": {}}])


def test_fused_parameters_are_stored_once_as_their_matrices_and_joined_again():
    """transformers 5's fused experts (MixtralExperts: one 3-D parameter per projection, experts
    first; DBRX: one matrix of the experts' row blocks) and a MultiheadAttention's in_proj_weight are analysed as their matrices (one per expert,
    q/k/v); the cache holds those matrices, not the parameter's bytes a second time, and the module
    state is joined again from them exactly."""
    import transformers

    from zooscope.jacobian.rebuild import module_state
    from zooscope.layers import layers_from_module
    from zooscope.sources.built import unanalysed_state

    torch.manual_seed(0)
    config = transformers.MixtralConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=3)
    dbrx = transformers.DbrxConfig(d_model=32, n_heads=4, n_layers=1, max_seq_len=16, vocab_size=96,
                                   attn_config={"kv_n_heads": 2, "rope_theta": 10000.0},
                                   ffn_config={"ffn_hidden_size": 24, "moe_num_experts": 3})
    network = torch.nn.ModuleDict({"moe": transformers.MixtralModel(config), "dbrx": transformers.DbrxModel(dbrx),
                                   "attention": torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16)})
    layers = layers_from_module(network)
    by_name = {layer.name: layer for layer in layers.layers}
    state = network.state_dict()
    for block in range(2):
        experts = f"moe.layers.{block}.mlp.experts"
        for projection in ("gate_up_proj", "down_proj"):
            fused = state[f"{experts}.{projection}"]
            for e in range(3):
                layer = by_name[f"{experts}.{projection}.{e}"]
                assert layer.type == "Linear" and layer.shape == list(fused[e].shape)
                assert torch.equal(torch.as_tensor(layers.tensors[layer.tensor]), fused[e])
        assert by_name[f"moe.layers.{block}.mlp.gate"].type == "Linear"  # the router's bare weight
    for projection in ("w1", "v1", "w2"):  # DBRX: the experts' (intermediate, hidden) row blocks of one matrix
        fused = state[f"dbrx.blocks.0.ffn.experts.mlp.{projection}"]
        for e in range(3):
            layer = by_name[f"dbrx.blocks.0.ffn.experts.mlp.{projection}.{e}"]
            assert layer.type == "Linear" and layer.shape == [24, 32]
            assert torch.equal(torch.as_tensor(layers.tensors[layer.tensor]), fused[24 * e:24 * (e + 1)])
    names = list(by_name)
    assert names.index("moe.layers.0.self_attn.o_proj") < names.index("moe.layers.0.mlp.gate") \
        < names.index("moe.layers.0.mlp.experts.gate_up_proj.0") < names.index("moe.layers.1.self_attn.q_proj")
    other = unanalysed_state(network, layers)
    assert not [key for key in other if key.endswith(("gate_up_proj", "down_proj", "in_proj_weight", "w1", "v1", "w2"))]
    stored = {**{layer.tensor: torch.as_tensor(layers.tensors[layer.tensor]) for layer in layers.layers}, **other}
    joined = module_state(network, stored)
    assert joined.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(joined[key], value), key


def test_a_weight_norm_parametrisation_is_analysed_as_its_weight_and_stored_as_its_tensors():
    """A weight-normed module's layer is the weight it computes; the model cache keeps its two
    tensors (magnitude and direction) as the rest of the state, from which it is rebuilt exactly."""
    from torch.nn.utils.parametrizations import weight_norm

    from zooscope.jacobian.rebuild import module_state
    from zooscope.layers import layers_from_module
    from zooscope.sources.built import unanalysed_state

    torch.manual_seed(0)
    network = torch.nn.Sequential(weight_norm(torch.nn.Conv1d(4, 6, 3), dim=2), weight_norm(torch.nn.Linear(6, 5)),
                                  weight_norm(torch.nn.Linear(5, 4), dim=None))  # one norm over the whole weight
    with torch.no_grad():
        for module in network:
            module.parametrizations.weight.original0.mul_(2.5)
    layers = layers_from_module(network)
    assert [(layer.name, layer.type) for layer in layers.layers] == [("0", "Conv1d"), ("1", "Linear"), ("2", "Linear")]
    for layer, module in zip(layers.layers, network):
        assert torch.equal(torch.as_tensor(layers.tensors[layer.tensor]), module.weight.detach())
    other = unanalysed_state(network, layers)
    assert {key for key in other if "original" in key} == {f"{i}.parametrizations.weight.original{j}"
                                                             for i in (0, 1, 2) for j in (0, 1)}
    stored = {**{layer.tensor: torch.as_tensor(layers.tensors[layer.tensor]) for layer in layers.layers}, **other}
    joined = module_state(network, stored)
    assert joined.keys() == network.state_dict().keys()
    assert all(torch.equal(joined[key], value) for key, value in network.state_dict().items())
