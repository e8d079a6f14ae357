"""Third-party checkpoints (issue 14, item 1): formats told by content, the wrapper rule, the
prefixes of DataParallel, torch.compile and Lightning, .npz files, and their bad-input errors.

Every file is written by its own library (torch.save, numpy.savez, a Lightning Trainer); the
expected layers are those of the same weights saved plainly with safetensors' writer (a second
route: no wrapper, no prefix, another format), or written out by hand."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import checked_meta
from zooscope.sources.base import FetchError
from zooscope.sources.fetch import fetch_model


def cifar_resnet_block() -> nn.Module:
    """A small CIFAR-ResNet-like network: conv stem, a block of two convs, batch norms, a head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )


# The analysed layers of cifar_resnet_block, by hand: the two convs and the head.
EXPECTED = [("0", "Conv2d", [8, 3, 3, 3]), ("3", "Conv2d", [8, 8, 3, 3]), ("8", "Linear", [10, 8])]


def row(path, model="m", **extra):
    return {"model": model, "series": "s", "source": f"file:{path}", "accuracy": None, **extra}


def fetched(tmp_path, path, name="out", **extra):
    out = tmp_path / name
    fetch_model(row(path, **extra), out, sheet_dir=tmp_path)
    return (json.loads((out / "layers.json").read_text())["layers"], checked_meta(out),
            load_file(out / "model.safetensors"))


def plain_reference(tmp_path, state):
    """The same weights saved plainly as safetensors and fetched: the second route."""
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "plain.safetensors")
    return fetched(tmp_path, "plain.safetensors", name="plain-out")


def same_layers(got, reference):
    assert [(l["name"], l["tensor"], l["type"], l["shape"], l["sha256"]) for l in got[0]] == \
        [(l["name"], l["tensor"], l["type"], l["shape"], l["sha256"]) for l in reference[0]]
    assert got[2].keys() == reference[2].keys()
    assert all(torch.equal(got[2][key], reference[2][key]) for key in got[2])


def test_dataparallel_state_dict_in_a_th_file_with_best_prec1(tmp_path):
    """The CIFAR ResNet series' format: {"state_dict": DataParallel's state, "best_prec1": ...} as .th."""
    network = cifar_resnet_block()
    parallel = nn.DataParallel(network)
    assert all(key.startswith("module.") for key in parallel.state_dict())
    torch.save({"state_dict": parallel.state_dict(), "best_prec1": 91.25}, tmp_path / "resnet20-12fca82f.th")
    got = fetched(tmp_path, "resnet20-12fca82f.th")
    assert [(l["name"], l["type"], l["shape"]) for l in got[0]] == EXPECTED
    assert got[1]["checkpoint"] == {"format": "torch", "files": ["resnet20-12fca82f.th"], "key": "state_dict",
                                    "prefixes_removed": ["module."]}
    same_layers(got, plain_reference(tmp_path, network.state_dict()))


def test_imagenet_example_model_best_pth_tar(tmp_path):
    """pytorch/examples' ImageNet script saves epoch, arch, state_dict, best_acc1 (a 0-d tensor) and
    the optimizer's state: the state dict is the one candidate."""
    network = cifar_resnet_block()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
    network(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    torch.save({"epoch": 90, "arch": "resnet", "state_dict": network.state_dict(), "best_acc1": torch.tensor(69.76),
                "optimizer": optimizer.state_dict(), "scheduler": {"last_epoch": 90}}, tmp_path / "model_best.pth.tar")
    got = fetched(tmp_path, "model_best.pth.tar")
    assert got[1]["checkpoint"]["key"] == "state_dict" and got[1]["checkpoint"]["prefixes_removed"] == []
    same_layers(got, plain_reference(tmp_path, network.state_dict()))


def test_a_real_lightning_checkpoint(tmp_path):
    """A checkpoint written by lightning's Trainer: the LightningModule holds the network as
    ``self.model``, so every key starts with "model."; removed because the file is Lightning's."""
    import lightning

    network = cifar_resnet_block()

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = network

        def training_step(self, batch, index):
            x, y = batch
            return nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,)))
    trainer = lightning.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, accelerator="cpu", devices=1,
                                default_root_dir=tmp_path / "lightning")
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=4))
    trainer.save_checkpoint(tmp_path / "epoch=0-step=1.ckpt")
    got = fetched(tmp_path, "epoch=0-step=1.ckpt")
    assert got[1]["checkpoint"]["key"] == "state_dict" and got[1]["checkpoint"]["prefixes_removed"] == ["model."]
    same_layers(got, plain_reference(tmp_path, network.state_dict()))


def test_model_prefix_is_kept_outside_lightning_checkpoints(tmp_path):
    """A plain state dict of a module whose one child is named model keeps its names."""
    wrapper = nn.Module()
    wrapper.model = cifar_resnet_block()
    torch.save(wrapper.state_dict(), tmp_path / "weights")  # no suffix at all
    got = fetched(tmp_path, "weights")
    assert [l["name"] for l in got[0]] == [f"model.{name}" for name, _, _ in EXPECTED]
    assert got[1]["checkpoint"]["prefixes_removed"] == [] and got[1]["checkpoint"]["key"] == "/"


def ema_checkpoint(tmp_path) -> tuple[nn.Module, dict]:
    """{"model": ..., "ema": ...} with a real EMA (torch.optim.swa_utils.AveragedModel: its state is
    "module."-prefixed, beside its n_averaged counter)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    network = cifar_resnet_block()
    ema = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    ema.update_parameters(network)  # the first update copies the weights
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(1.0)
    ema.update_parameters(network)  # the second averages them with the trained ones
    assert "n_averaged" in ema.state_dict()
    torch.save({"model": network.state_dict(), "ema": ema.state_dict(), "epoch": 3}, tmp_path / "last.pt")
    return network, ema.module.state_dict()


def test_several_candidates_are_an_error_listing_them(tmp_path):
    ema_checkpoint(tmp_path)
    with pytest.raises(FetchError) as error:
        fetched(tmp_path, "last.pt")
    message = str(error.value)
    assert "model 'm'" in message and str(tmp_path / "last.pt") in message
    assert "model (" in message and "ema (" in message and "checkpoint_key" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key", ["model", "ema"])
def test_checkpoint_key_names_the_candidate(tmp_path, key):
    network, ema_state = ema_checkpoint(tmp_path)
    got = fetched(tmp_path, "last.pt", checkpoint_key=key)
    state = network.state_dict() if key == "model" else ema_state
    assert got[1]["checkpoint"]["key"] == key
    assert got[1]["checkpoint"]["prefixes_removed"] == ([] if key == "model" else ["module."])
    same_layers(got, plain_reference(tmp_path, state))
    if key == "ema":  # the averaged weights, not the trained ones
        assert not torch.equal(got[2]["0.weight"], network.state_dict()["0.weight"])


def test_torch_compile_and_dataparallel_prefixes(tmp_path):
    network = cifar_resnet_block()
    compiled = torch.compile(network)
    assert all(key.startswith("_orig_mod.") for key in compiled.state_dict())
    torch.save({"model_state_dict": nn.DataParallel(compiled).state_dict()}, tmp_path / "compiled.pth")
    got = fetched(tmp_path, "compiled.pth")
    assert got[1]["checkpoint"]["prefixes_removed"] == ["module.", "_orig_mod."]
    same_layers(got, plain_reference(tmp_path, network.state_dict()))


@pytest.mark.parametrize("name", ["weights.npz", "weights.bin"])
@pytest.mark.parametrize("compressed", [False, True])
def test_numpy_savez(tmp_path, name, compressed):
    network = cifar_resnet_block()
    arrays = {key: value.numpy() for key, value in network.state_dict().items()}
    with open(tmp_path / name, "wb") as handle:  # numpy.savez adds .npz to a name without it
        (np.savez_compressed if compressed else np.savez)(handle, **arrays)
    got = fetched(tmp_path, name)
    assert got[1]["checkpoint"]["format"] == "npz"
    same_layers(got, plain_reference(tmp_path, network.state_dict()))
    assert got[1]["num_params"] == sum(v.numel() for v in network.state_dict().values() if v.is_floating_point())


def test_legacy_torch_format_without_a_suffix(tmp_path):
    network = cifar_resnet_block()
    torch.save({"net": network.state_dict(), "acc": 93.0}, tmp_path / "ckpt", _use_new_zipfile_serialization=False)
    got = fetched(tmp_path, "ckpt")
    assert got[1]["checkpoint"]["key"] == "net"
    same_layers(got, plain_reference(tmp_path, network.state_dict()))


@pytest.mark.parametrize("content, words", [
    ({"epoch": 3, "best_prec1": 91.0}, "no tensors found"),
    ({"state_dict": {"steps": torch.tensor(3), "scale": torch.ones(4)}, "epoch": 3},
     r"no analysable weight in file:w.th \(.*\): 2 tensors: 0 analysed; left out: 1 1-D, 1 integer buffer;"),
])
def test_a_checkpoint_without_weights(tmp_path, content, words):
    torch.save(content, tmp_path / "w.th")
    with pytest.raises(FetchError, match=words) as error:
        fetched(tmp_path, "w.th")
    assert "model 'm'" in str(error.value) and str(tmp_path / "w.th") in str(error.value)


def test_a_checkpoint_key_that_is_not_a_candidate(tmp_path):
    torch.save({"state_dict": cifar_resnet_block().state_dict()}, tmp_path / "w.th")
    with pytest.raises(FetchError, match=r"checkpoint_key 'ema' is not among .*: state_dict \(\d+ tensors\)"):
        fetched(tmp_path, "w.th", checkpoint_key="ema")


def test_a_checkpoint_key_for_a_file_without_wrappers(tmp_path):
    save_file(cifar_resnet_block().state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(FetchError, match="has no wrappers; leave the column empty"):
        fetched(tmp_path, "w.safetensors", checkpoint_key="state_dict")


def test_checkpoint_key_is_refused_on_other_sources():
    from zooscope.zoo import RowError, parse_row

    with pytest.raises(RowError, match="applies to file: sources only"):
        parse_row({"model": "m", "series": "s", "source": "train:mlp", "accuracy": None, "checkpoint_key": "ema"})


# --------------------------------------------------------------------------- float8 checkpoints

def quantise_fp8_blocks(weight: torch.Tensor, block: int = 128):
    """DeepSeek-V3's block quantisation, from its definition: each block x block tile (the last ones
    short) scaled by s = max|W_tile| / 448 (float8_e4m3's largest value), q = W / s in float8."""
    rows, columns = weight.shape
    grid = torch.zeros((-(-rows // block), -(-columns // block)))
    quantised = torch.zeros_like(weight, dtype=torch.float8_e4m3fn)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            tile = weight[i * block:(i + 1) * block, j * block:(j + 1) * block]
            grid[i, j] = tile.abs().max() / 448
            quantised[i * block:(i + 1) * block, j * block:(j + 1) * block] = (tile / grid[i, j]).to(torch.float8_e4m3fn)
    return quantised, grid


def blockwise(quantised: torch.Tensor, grid: torch.Tensor, block: int = 128) -> torch.Tensor:
    """q * s with each scale repeated over its tile (the dequantisation, written independently)."""
    expanded = grid.repeat_interleave(block, 0).repeat_interleave(block, 1)[: quantised.shape[0], : quantised.shape[1]]
    return quantised.float() * expanded


def test_block_scaled_fp8_weights_are_dequantised_with_their_scales(tmp_path):
    """A DeepSeek-V3 / Qwen3-FP8 style folder (config.json with transformers' fp8 quantization_config,
    float8 weights, a float32 weight_scale_inv per 128 x 128 tile, shapes not multiples of 128): each
    layer is q * s over its tiles, not the float8 values; the scales are quantisation scales."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=160, intermediate_size=320, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    folder = tmp_path / "fp8"
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    original = load_file(folder / "model.safetensors")
    stored, expected = {}, {}
    for key, value in original.items():
        if key.endswith("_proj.weight"):
            quantised, grid = quantise_fp8_blocks(value)
            stored.update({key: quantised, f"{key}_scale_inv": grid})
            expected[key.removesuffix(".weight")] = blockwise(quantised, grid)
        else:
            stored[key] = value
    (folder / "model.safetensors").unlink()
    save_file(stored, folder / "model.safetensors")
    content = json.loads((folder / "config.json").read_text())
    content["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic",
                                      "weight_block_size": [128, 128]}
    (folder / "config.json").write_text(json.dumps(content))

    from conftest import fetch_file_source

    layers, matrices, meta = fetch_file_source(folder, tmp_path / "out")
    assert expected.keys() < matrices.keys()
    for name, matrix in expected.items():
        np.testing.assert_array_equal(matrices[name], matrix.numpy(), err_msg=name)
        # and it is the layer: within float8's rounding of the original weight, unlike the float8 values
        weight = original[f"{name}.weight"]
        assert torch.allclose(matrix, weight, rtol=0.07, atol=float(weight.abs().max()) * 1e-2)
    records = {t["tensor"]: t for t in json.loads((tmp_path / "out" / "tensors.json").read_text())["tensors"]}
    for key in (k for k in stored if k.endswith("_scale_inv")):
        assert records[key]["reason"] == "quantisation scale"
        assert records[key]["detail"] == f"of {key.removesuffix('_scale_inv')}"
        assert records[key.removesuffix("_scale_inv")]["dtype"] == "F8_E4M3" and not records[key.removesuffix("_scale_inv")]["reason"]


@pytest.mark.parametrize("scale_shape", ["channel", "tensor"])
def test_fp8_weights_with_a_channel_or_tensor_scale_are_dequantised(tmp_path, scale_shape):
    """compressed-tensors / FBGEMM: weight_scale of shape (out, 1) or a scalar, in a bare file."""
    torch.manual_seed(1)
    weight = torch.randn(96, 64)
    scale = weight.abs().amax(dim=1, keepdim=True) / 448 if scale_shape == "channel" else weight.abs().max() / 448
    quantised = (weight / scale).to(torch.float8_e4m3fn)
    save_file({"fc.weight": quantised, "fc.weight_scale": scale.float().contiguous(), "fc.input_scale": torch.ones(()),
               "raw.weight": quantised.clone()}, tmp_path / "m.safetensors")
    fetch_model({"model": "m", "series": "s", "source": f"file:{tmp_path / 'm.safetensors'}", "accuracy": None},
                tmp_path / "out", sheet_dir=tmp_path)
    cached = load_file(tmp_path / "out" / "model.safetensors")
    assert torch.equal(cached["fc.weight"], quantised.float() * scale.float())
    assert cached["raw.weight"].dtype == torch.float8_e4m3fn  # no scale: as stored
    assert torch.equal(cached["raw.weight"].float(), quantised.float())
    reasons = {t["tensor"]: t["reason"] for t in json.loads((tmp_path / "out" / "tensors.json").read_text())["tensors"]}
    assert reasons["fc.weight_scale"] == reasons["fc.input_scale"] == "quantisation scale"


def test_an_fp8_scale_that_does_not_tile_its_weight_names_the_tensor(tmp_path):
    save_file({"fc.weight": torch.randn(100, 64).to(torch.float8_e4m3fn), "fc.weight_scale_inv": torch.ones(3, 3)},
              tmp_path / "m.safetensors")
    with pytest.raises(FetchError, match=r"model 'bad': float8 weight 'fc.weight' \[100, 64\]: its scale \[3, 3\] "
                                         r"does not tile it"):
        fetch_model({"model": "bad", "series": "s", "source": f"file:{tmp_path / 'm.safetensors'}", "accuracy": None},
                    tmp_path / "out", sheet_dir=tmp_path)


# --------------------------------------------------------------------------- MXFP4 checkpoints

E2M1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])


def quantise_mxfp4(matrix: torch.Tensor):
    """OCP MXFP4 from its definition: each run of 32 values along a row shares the power of two
    2^e with e = floor(log2 max|x|) - 2 (E2M1's largest binade starts at 4), each value the nearest
    E2M1 code of x / 2^e; two codes a byte, the first in the low nibble. (..., rows, columns) ->
    blocks (..., rows, columns / 32, 16) uint8 and scales (..., rows, columns / 32) uint8 (e + 127)."""
    groups = matrix.float().reshape(*matrix.shape[:-1], -1, 32)
    exponent = torch.floor(torch.log2(groups.abs().amax(-1).clamp_min(2.0 ** -120))) - 2
    scaled = groups / torch.exp2(exponent)[..., None]
    codes = (scaled[..., None] - E2M1).abs().argmin(-1).to(torch.uint8)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)), (exponent + 127).to(torch.uint8)


def test_mxfp4_experts_are_decoded_as_transformers_decodes_them(tmp_path):
    """gpt-oss's release layout (config.json with an mxfp4 quantization_config, each block's experts
    as ``{proj}_blocks`` and ``{proj}_scales``): the layers are those of the same model saved in
    bfloat16 (names, types, shapes), each expert's matrix equal to transformers' own dequantisation
    (integrations.mxfp4.convert_moe_packed_tensors) and within MXFP4's rounding of the original."""
    import transformers
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from conftest import fetch_file_source

    torch.manual_seed(0)
    config = transformers.GptOssConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=3,
                                       num_experts_per_tok=2, layer_types=["full_attention"] * 2)
    plain, packed = tmp_path / "bf16", tmp_path / "mxfp4"
    transformers.GptOssForCausalLM(config).to(torch.bfloat16).save_pretrained(plain)
    original = load_file(plain / "model.safetensors")
    stored, reference = {}, {}
    for key, value in original.items():
        if key.endswith(("experts.gate_up_proj", "experts.down_proj")):
            # the checkpoint keeps each expert's (out, in) rows; transformers' module holds (in, out)
            blocks, scales = quantise_mxfp4(value.transpose(1, 2))
            stored.update({f"{key}_blocks": blocks.contiguous(), f"{key}_scales": scales.contiguous()})
            reference[key] = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)
            assert reference[key].shape == value.shape
        else:
            stored[key] = value
    packed.mkdir()
    save_file(stored, packed / "model.safetensors")
    content = json.loads((plain / "config.json").read_text())
    content["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn",
                                      "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (packed / "config.json").write_text(json.dumps(content))

    layers, matrices, meta = fetch_file_source(packed, tmp_path / "out")
    plain_layers, _, _ = fetch_file_source(plain, tmp_path / "plain")
    assert meta["layer_typing"] == "module tree of transformers GptOssForCausalLM (config.json)"
    assert [(l["name"], l["type"], l["shape"]) for l in layers] == [(l["name"], l["type"], l["shape"]) for l in plain_layers]
    for key, decoded in reference.items():
        for e in range(config.num_local_experts):
            np.testing.assert_array_equal(matrices[f"{key}.{e}"], decoded[e].float().numpy(), err_msg=f"{key}.{e}")
        error = (decoded.float() - original[key].float()).norm() / original[key].float().norm()
        assert error < 0.2, f"{key}: relative error {error:.3f}, not MXFP4's rounding of the original"
    cached = load_file(tmp_path / "out" / "model.safetensors")
    assert cached[f"{next(iter(reference))}.0.weight"].dtype == torch.bfloat16
    records = {t["tensor"]: t for t in json.loads((tmp_path / "out" / "tensors.json").read_text())["tensors"]}
    for key in reference:
        assert records[key]["dtype"] == "BF16" and not records[key]["reason"]
        assert records[key]["layer"] == ",".join(f"{key}.{e}" for e in range(config.num_local_experts))
        assert (records[f"{key}_scales"]["reason"], records[f"{key}_scales"]["detail"]) == (
            "quantisation scale", f"of {key} (MXFP4)")


def test_an_mxfp4_matrix_in_a_bare_file_is_its_decoded_values(tmp_path):
    """A single MXFP4 weight ({key}_blocks (rows, groups, 16), {key}_scales (rows, groups)) is one
    layer under {key}: each byte's low nibble first, each group's values times 2^(scale - 127)."""
    torch.manual_seed(2)
    weight = torch.randn(24, 64)
    blocks, scales = quantise_mxfp4(weight)
    save_file({"fc.weight_blocks": blocks.contiguous(), "fc.weight_scales": scales.contiguous()},
              tmp_path / "m.safetensors")
    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).reshape(24, 2, 32).long()
    expected = (E2M1[codes] * torch.exp2(scales.float() - 127)[..., None]).reshape(24, 64)
    from conftest import fetch_file_source

    layers, matrices, _ = fetch_file_source(tmp_path / "m.safetensors", tmp_path / "out")
    assert [(l["name"], l["type"], l["shape"]) for l in layers] == [("fc", "Linear", [24, 64])]
    np.testing.assert_array_equal(matrices["fc"], expected.numpy())


def test_mxfp4_blocks_that_do_not_match_their_scales_name_both(tmp_path):
    save_file({"mlp.experts.up_blocks": torch.zeros(2, 8, 2, 16, dtype=torch.uint8),
               "mlp.experts.up_scales": torch.zeros(2, 8, 3, dtype=torch.uint8)}, tmp_path / "m.safetensors")
    with pytest.raises(FetchError, match=r"model 'bad': MXFP4 blocks 'mlp.experts.up_blocks' \[2, 8, 2, 16\] and "
                                         r"scales \[2, 8, 3\]"):
        fetch_model({"model": "bad", "series": "s", "source": f"file:{tmp_path / 'm.safetensors'}", "accuracy": None},
                    tmp_path / "out", sheet_dir=tmp_path)


@pytest.mark.parametrize(("tensors", "words"), [
    ({"model.layers.0.q_proj.qweight": torch.zeros(8, 64, dtype=torch.int32),
      "model.layers.0.q_proj.qzeros": torch.zeros(1, 8, dtype=torch.int32),
      "model.layers.0.q_proj.scales": torch.ones(1, 64, dtype=torch.float16)}, "GPTQ or AWQ"),
    ({"model.layers.0.q_proj.weight": torch.zeros(2048, 1, dtype=torch.uint8),
      "model.layers.0.q_proj.weight.absmax": torch.ones(64), "model.layers.0.q_proj.weight.quant_map": torch.ones(16)},
     "bitsandbytes 4-bit"),
    ({"model.layers.0.q_proj.weight": torch.zeros(64, 64, dtype=torch.int8),
      "model.layers.0.q_proj.SCB": torch.ones(64)}, "bitsandbytes 8-bit"),
    ({"model.layers.0.q_proj.weight_packed": torch.zeros(64, 8, dtype=torch.int32),
      "model.layers.0.q_proj.weight_scale": torch.ones(64, 1)}, "compressed-tensors"),
    ({"model.layers.0.q_proj.weight": torch.zeros(64, 8, dtype=torch.uint32),
      "model.layers.0.q_proj.scales": torch.ones(64, 1, dtype=torch.float16),
      "model.layers.0.q_proj.biases": torch.zeros(64, 1, dtype=torch.float16)}, "MLX"),
    # NVIDIA ModelOpt's NVFP4: two 4-bit values a byte, a float8 scale per 16, a float32 one per tensor
    ({"model.layers.0.q_proj.weight": torch.zeros(64, 32, dtype=torch.uint8),
      "model.layers.0.q_proj.weight_scale": torch.ones(64, 4).to(torch.float8_e4m3fn),
      "model.layers.0.q_proj.weight_scale_2": torch.ones(())}, r"integers \(a weight matrix of an integer dtype with a scale"),
])
def test_weights_packed_as_integers_are_refused_naming_the_format(tmp_path, tensors, words):
    """The tensors these libraries write for a quantised Linear (its float embedding and head
    beside them): analysed, the model would be its embedding alone."""
    save_file({**tensors, "model.embed_tokens.weight": torch.randn(100, 64)}, tmp_path / "m.safetensors")
    with pytest.raises(FetchError, match=rf"model 'q': .*m\.safetensors holds 1 weights quantised as {words}.*"
                                         r"does not dequantise.*GGUF"):
        fetch_model({"model": "q", "series": "s", "source": f"file:{tmp_path / 'm.safetensors'}", "accuracy": None},
                    tmp_path / "out", sheet_dir=tmp_path)


# --------------------------------------------------------------------------- torch.distributed.checkpoint folders

# Two ranks save one model sharded by rows (DTensor, as FSDP2 and tensor parallelism hold it),
# its optimizer state beside it and a plain number, with dcp.save; rank 0 also saves the whole
# state dict with torch.save, the reference.
SAVE_SHARDED = """
import sys, torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import distribute_tensor, Shard
dist.init_process_group("gloo")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.ReLU(), torch.nn.Linear(24, 10))
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
state = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in model.state_dict().items()}
moments = {k: distribute_tensor(torch.randn_like(v), mesh, [Shard(0)]) for k, v in model.state_dict().items()}
dcp.save({"model": state, "optim": {"exp_avg": moments}, "epoch": 3}, checkpoint_id=sys.argv[1])
if dist.get_rank() == 0:
    torch.save(model.state_dict(), sys.argv[2])
dist.destroy_process_group()
"""


def test_a_checkpoint_saved_sharded_by_two_ranks_is_read_from_its_chunks(tmp_path, monkeypatch):
    """A torch.distributed.checkpoint folder written by two processes (each tensor in two chunks, one
    file per rank): the model's matrices equal the whole state dict's; the optimizer state beside it
    is not a candidate and is never read."""
    import socket
    import subprocess
    import sys

    from conftest import fetch_file_source
    from zooscope.sources import dcp

    (tmp_path / "save.py").write_text(SAVE_SHARDED)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    folder, reference = tmp_path / "checkpoint", tmp_path / "reference.pt"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                    str(tmp_path / "save.py"), str(folder), str(reference)], check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    read: list[str] = []
    original_chunk = dcp.DcpStore._chunk
    monkeypatch.setattr(dcp.DcpStore, "_chunk", lambda self, tensor, chunk: read.append(tensor.fqn)
                        or original_chunk(self, tensor, chunk))
    layers, matrices, meta = fetch_file_source(folder, tmp_path / "out")
    whole = torch.load(reference, weights_only=True)
    assert [(layer["name"], layer["type"]) for layer in layers] == [("0", "Linear"), ("2", "Linear")]
    for layer in layers:
        np.testing.assert_array_equal(matrices[layer["name"]], whole[layer["tensor"]].numpy())
    assert meta["checkpoint"] == {"format": "dcp", "files": [".metadata", "__0_0.distcp", "__1_0.distcp"],
                                  "key": "model", "prefixes_removed": []}
    assert read and not [fqn for fqn in read if not fqn.startswith("model.")]
    records = json.loads((tmp_path / "out" / "tensors.json").read_text())["tensors"]
    assert sorted(record["tensor"] for record in records) == sorted(whole)


def test_a_checkpoint_key_chooses_among_the_state_dicts_of_a_dcp_folder(tmp_path):
    import torch.distributed.checkpoint as dcp

    torch.manual_seed(0)
    model, ema = nn.Linear(8, 6), nn.Linear(8, 6)
    with pytest.warns(UserWarning):  # "assuming the intent is to save in a single process"
        dcp.save({"model": model.state_dict(), "ema": ema.state_dict()}, checkpoint_id=tmp_path / "ck")
    row = {"model": "m", "series": "s", "source": f"file:{tmp_path / 'ck'}", "accuracy": None}
    with pytest.raises(FetchError, match=r"holds several sets of tensors: model \(2 tensors\), ema \(2 tensors\)"):
        fetch_model(row, tmp_path / "out", sheet_dir=tmp_path)
    fetch_model({**row, "checkpoint_key": "ema"}, tmp_path / "out", sheet_dir=tmp_path)
    stored = load_file(tmp_path / "out" / "model.safetensors")
    assert torch.equal(stored["weight"], ema.weight.detach())


def test_dcp_metadata_that_would_run_code_is_refused_and_never_runs(tmp_path):
    """torch reads .metadata with pickle.load; a crafted one naming any global but DCP's metadata
    classes is refused before anything is made."""
    import os
    import pickle

    import torch.distributed.checkpoint as dcp

    with pytest.warns(UserWarning):
        dcp.save({"model": nn.Linear(4, 4).state_dict()}, checkpoint_id=tmp_path / "ck")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (tmp_path / "ck" / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(FetchError, match=r"refusing to load .*\.metadata: the metadata names \w+\.system"):
        fetch_model({"model": "m", "series": "s", "source": f"file:{tmp_path / 'ck'}", "accuracy": None},
                    tmp_path / "out", sheet_dir=tmp_path)
    assert not marker.exists()


# --------------------------------------------------------------------------- TorchScript archives

class Mode(__import__("enum").Enum):
    FAST = "fast"


class Scripted(nn.Module):
    """A module as deployed: convolutions, a block in a container, an enum attribute (TorchScript
    pickles it unlike Python) and a head tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(12, 8)
        self.features = nn.Sequential(nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 12, bias=False)
        self.head.weight = self.embed.weight
        self.mode = Mode.FAST

    def forward(self, tokens):
        x = self.features(self.embed(tokens).transpose(1, 2)).transpose(1, 2)
        return self.head(x) if self.mode == Mode.FAST else x


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script's deprecation notice
@pytest.mark.parametrize("compile_with", ["script", "trace"])
def test_a_torchscript_archive_is_read_for_its_tensors_without_running_it(tmp_path, compile_with):
    """torch.jit.save's archive (code, constants, data.pkl of module objects): refused by
    torch.load(weights_only=True) and runnable only by compiling its code, it is read as the state
    dict of its modules, the tied head once."""
    from conftest import fetch_file_source

    torch.manual_seed(0)
    network = Scripted().eval()
    compiled = torch.jit.script(network) if compile_with == "script" else \
        torch.jit.trace(network, torch.randint(0, 12, (2, 5)))
    compiled.save(str(tmp_path / "deployed.pt"))
    with pytest.raises(RuntimeError, match="TorchScript"):
        torch.load(tmp_path / "deployed.pt", weights_only=True)
    layers, matrices, meta = fetch_file_source(tmp_path / "deployed.pt", tmp_path / "out")
    state = network.state_dict()
    assert meta["checkpoint"]["format"] == "torchscript"
    assert [(layer["name"], layer["type"]) for layer in layers] == [("embed", "Embedding"), ("features.0", "Conv1d")]
    for layer in layers:
        np.testing.assert_array_equal(matrices[layer["name"]], state[layer["tensor"]].numpy())
    records = {t["tensor"]: t for t in json.loads((tmp_path / "out" / "tensors.json").read_text())["tensors"]}
    assert records.keys() == state.keys()
    assert records["head.weight"]["reason"] == "tied"


def test_a_torchscript_archive_whose_pickle_would_run_code_is_refused(tmp_path):
    import os
    import pickle
    import zipfile

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with pytest.warns(FutureWarning):
        torch.jit.script(nn.Linear(4, 4)).save(str(tmp_path / "m.pt"))
    with zipfile.ZipFile(tmp_path / "m.pt") as source, zipfile.ZipFile(tmp_path / "evil.pt", "w") as target:
        for item in source.infolist():
            data = pickle.dumps(Payload()) if item.filename.endswith("/data.pkl") else source.read(item)
            target.writestr(item, data)
    with pytest.raises(FetchError, match=r"refusing to load TorchScript archive .*calls \w+\.system"):
        fetch_model({"model": "m", "series": "s", "source": f"file:{tmp_path / 'evil.pt'}", "accuracy": None},
                    tmp_path / "out", sheet_dir=tmp_path)
    assert not marker.exists()


# --------------------------------------------------------------------------- torch.export archives

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_torch_export_archive_is_read_for_its_weights(tmp_path, dtype):
    """torch.export.save's .pt2 (each weight's raw bytes and a JSON config of dtypes, sizes and
    strides): the state dict of the exported module, buffers included, in its stored dtype."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    network = network.to(dtype).eval()
    torch.export.save(torch.export.export(network, (torch.randn(1, 3, 8, 8, dtype=dtype),)), str(tmp_path / "m.pt2"))
    fetch_model({"model": "m", "series": "s", "source": f"file:{tmp_path / 'm.pt2'}", "accuracy": None},
                tmp_path / "out", sheet_dir=tmp_path)
    layers, meta = json.loads((tmp_path / "out" / "layers.json").read_text())["layers"], checked_meta(tmp_path / "out")
    state = network.state_dict()
    assert meta["checkpoint"]["format"] == "pt2"
    assert [(layer["name"], layer["type"]) for layer in layers] == [("0", "Conv2d"), ("4", "Linear")]
    cached = load_file(tmp_path / "out" / "model.safetensors")
    for layer in layers:
        assert cached[layer["tensor"]].dtype == dtype and torch.equal(cached[layer["tensor"]], state[layer["tensor"]])
    records = {t["tensor"] for t in json.loads((tmp_path / "out" / "tensors.json").read_text())["tensors"]}
    assert records == state.keys()
