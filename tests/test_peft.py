"""LoRA adapters made with peft: merged like peft's merge_and_unload, spectra from the factors."""
import copy
import json
import math

import numpy as np
import pytest

import torch
import peft

from conftest import checked_meta
from zooscope import io  # noqa: E402
from zooscope.sources.base import FetchError  # noqa: E402
from zooscope.sources.fetch import fetch_model  # noqa: E402
from zooscope.sources.peft import AdapterError, adapter_scale, read_adapter  # noqa: E402
from zooscope.spectra import delta_esd  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(70, 24)
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.fc1 = torch.nn.Linear(24, 64)
        self.fc2 = torch.nn.Linear(64, 40)
        self.head = torch.nn.Linear(40, 5)


def svd_eigenvalues(matrix):
    return np.sort(np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False) ** 2)


def make_adapter(tmp_path, name, **config):
    """A base Net saved as safetensors, and a LoRA adapter of it with random (nonzero) factors."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    base = Net()
    base_file = tmp_path / "base.safetensors"
    if not base_file.exists():
        save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(base_file))
    torch.manual_seed(1)
    lora = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(init_lora_weights=False, **config))
    with torch.no_grad():  # B is zero at peft's usual init: make every factor (and saved module) random
        for key, value in lora.named_parameters():
            if "lora_" in key or "modules_to_save" in key:
                value.normal_(0, 0.3)
    lora.save_pretrained(str(tmp_path / name))
    return base, lora, tmp_path / name


def fetch_pair(tmp_path, adapter_dir, model="adapted"):
    fetch_model({"model": "base", "series": "s", "source": f"file:{tmp_path / 'base.safetensors'}", "accuracy": None},
                tmp_path / "models" / "base", sheet_dir=tmp_path)
    fetch_model({"model": model, "series": "s", "source": f"peft:{adapter_dir}", "accuracy": 90.0, "base": "base"},
                tmp_path / "models" / model, sheet_dir=tmp_path, base_dir=tmp_path / "models" / "base")
    return tmp_path / "models" / "base", tmp_path / "models" / model


@pytest.mark.parametrize("use_rslora", [False, True])
def test_merged_adapter_equals_peft_merge_and_the_spectra_the_dense_update(tmp_path, use_rslora):
    from safetensors.numpy import load_file

    base, lora, folder = make_adapter(tmp_path, "lora", r=4, lora_alpha=8, use_rslora=use_rslora,
                                      target_modules=["fc1", "fc2", "embed", "conv"], modules_to_save=["head"])
    factors = {k: v.detach().double().numpy() for k, v in lora.named_parameters() if "lora_" in k}
    merged = lora.merge_and_unload().state_dict()
    base_dir, model_dir = fetch_pair(tmp_path, folder)
    fetched = load_file(str(model_dir / "model.safetensors"))
    layers = {layer["tensor"]: layer for layer in io.read_json(model_dir / "layers.json")["layers"]}
    base_layers = {layer["tensor"]: layer for layer in io.read_json(base_dir / "layers.json")["layers"]}
    for key in ("embed.weight", "conv.weight", "fc1.weight", "fc2.weight", "head.weight"):
        np.testing.assert_allclose(fetched[key], merged[key].numpy(), rtol=0, atol=2e-6, err_msg=key)
        assert layers[key]["sha256"] != base_layers[key]["sha256"]
    np.testing.assert_array_equal(fetched["head.bias"], merged["head.bias"].numpy())  # modules_to_save
    scale = 8 / math.sqrt(4) if use_rslora else 8 / 4
    meta = checked_meta(model_dir)
    assert meta["adapter"]["layers"]["fc1.weight"]["scale"] == pytest.approx(scale)
    assert sorted(meta["adapter"]["layers"]) == ["embed.weight", "fc1.weight", "fc2.weight"]  # conv: merged densely

    section = delta_esd.compute_model_deltas(model_dir / "model.safetensors", model_dir / "layers.json",
                                             base_dir / "model.safetensors", base_dir / "layers.json",
                                             tmp_path / "esd", adapter=meta["adapter"], top_k=3)
    records = {r["name"]: r for r in section["layers"]}
    b, a = factors["base_model.model.fc1.lora_B.default.weight"], factors["base_model.model.fc1.lora_A.default.weight"]
    dense = scale * b @ a
    assert records["fc1"]["route"] == "low-rank"
    values = np.load(tmp_path / "esd" / records["fc1"]["file"])[0]
    np.testing.assert_allclose(values, svd_eigenvalues(dense)[-4:], rtol=1e-5)
    base_fc1 = base.state_dict()["fc1.weight"].double().numpy()
    assert records["fc1"]["relative_norm"][0] == pytest.approx(np.linalg.norm(dense) / np.linalg.norm(base_fc1), rel=1e-5)
    eb = factors["base_model.model.embed.lora_embedding_B.default"]
    ea = factors["base_model.model.embed.lora_embedding_A.default"]
    np.testing.assert_allclose(np.load(tmp_path / "esd" / records["embed"]["file"])[0],
                               svd_eigenvalues((scale * eb @ ea).T)[-4:], rtol=1e-5)
    # the merged weights' own update (dense route) has the same nonzero spectrum as the factors'
    merged_fc1 = merged["fc1.weight"].double().numpy()
    np.testing.assert_allclose(svd_eigenvalues(merged_fc1 - base_fc1)[-4:], values, rtol=1e-3)
    assert records["conv"]["route"] == "dense" and records["head"]["route"] == "dense"


def test_alpha_pattern_sets_a_modules_scale(tmp_path):
    _, _, folder = make_adapter(tmp_path, "pattern", r=2, lora_alpha=4, alpha_pattern={"fc2": 16},
                                target_modules=["fc1", "fc2"])
    adapter = read_adapter(folder, "m")
    assert adapter.updates["fc1.weight"].scale == pytest.approx(adapter_scale(4, 2)) == pytest.approx(2.0)
    assert adapter.updates["fc2.weight"].scale == pytest.approx(8.0)


def test_bad_adapters_are_errors_naming_the_model(tmp_path):
    _, _, folder = make_adapter(tmp_path, "dora", r=2, lora_alpha=4, target_modules=["fc1"], use_dora=True)
    with pytest.raises(AdapterError, match="model 'm'.*DoRA"):
        read_adapter(folder, "m")
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        read_adapter(tmp_path, "m")
    _, _, folder = make_adapter(tmp_path, "fits", r=2, lora_alpha=4, target_modules=["fc1"])
    config = json.loads((folder / "adapter_config.json").read_text())
    config["peft_type"] = "IA3"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="type 'IA3'"):
        read_adapter(folder, "m")


def test_an_adapter_of_another_base_is_a_fetch_error(tmp_path):
    from safetensors.torch import save_file

    _, _, folder = make_adapter(tmp_path, "lora", r=2, lora_alpha=4, target_modules=["fc1"])
    other = torch.nn.Sequential(torch.nn.Linear(3, 4))
    save_file(other.state_dict(), str(tmp_path / "other.safetensors"))
    fetch_model({"model": "other", "series": "s", "source": f"file:{tmp_path / 'other.safetensors'}", "accuracy": None},
                tmp_path / "models" / "other", sheet_dir=tmp_path)
    with pytest.raises(FetchError, match="model 'adapted'.*fc1.weight.*another base model"):
        fetch_model({"model": "adapted", "series": "s", "source": f"peft:{folder}", "accuracy": None, "base": "other"},
                    tmp_path / "models" / "adapted", sheet_dir=tmp_path, base_dir=tmp_path / "models" / "other")


def test_an_adapter_of_a_task_model_fits_its_bare_backbone(tmp_path):
    """An adapter made on a wrapper (keys 'body.fc1...') merges onto the bare base ('fc1...')."""
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    torch.manual_seed(0)
    base = Net()
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(tmp_path / "base.safetensors"))
    wrapper = torch.nn.Module()
    wrapper.body = copy.deepcopy(base)
    wrapper.task_head = torch.nn.Linear(5, 2)
    lora = peft.get_peft_model(wrapper, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["fc1", "fc2"],
                                                        init_lora_weights=False))
    lora.save_pretrained(str(tmp_path / "wrapped"))
    merged = lora.merge_and_unload().state_dict()
    _, model_dir = fetch_pair(tmp_path, tmp_path / "wrapped")
    fetched = load_file(str(model_dir / "model.safetensors"))
    for key in ("fc1.weight", "fc2.weight"):
        np.testing.assert_allclose(fetched[key], merged[f"body.{key}"].numpy(), rtol=0, atol=2e-6)
    assert io.read_json(model_dir / "meta.json")["adapter"]["key_prefix"] == "body."


def test_an_adapter_fetched_without_its_base_is_an_error_naming_the_model(tmp_path):
    _, _, folder = make_adapter(tmp_path, "lora", r=2, lora_alpha=4, target_modules=["fc1"])
    for row, base_dir in (({"base": "base"}, None), ({}, tmp_path)):
        with pytest.raises(FetchError, match="model 'adapted': an adapter .* needs its base model in the column 'base'"):
            fetch_model({"model": "adapted", "series": "s", "source": f"file:{folder}", "accuracy": None, **row},
                        tmp_path / "models" / "adapted", sheet_dir=tmp_path, base_dir=base_dir)
    assert not (tmp_path / "models" / "adapted").exists()
