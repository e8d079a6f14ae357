"""``zooscope compare A B``: the per-layer update table without a workflow."""
import numpy as np
import pandas as pd
import pytest

from zooscope.cli import main

import torch


def net():
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 80),
                               torch.nn.ReLU(), torch.nn.Linear(80, 10))


def test_compare_a_fine_tune_saved_by_torch_against_a_safetensors_base(tmp_path, capsys):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = net()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(base, str(tmp_path / "base.safetensors"))
    with torch.no_grad():
        model[2].weight.add_(0.02 * torch.randn_like(model[2].weight))
    tuned = {k: v.clone() for k, v in model.state_dict().items()}
    tuned["extra.weight"] = torch.randn(7, 5)  # a layer of the fine-tune only
    tuned["4.weight"] = torch.randn(12, 80)  # a new head of another shape
    torch.save(tuned, tmp_path / "tuned.pt")

    assert main(["compare", str(tmp_path / "tuned.pt"), str(tmp_path / "base.safetensors"),
                 "-o", str(tmp_path / "out.tsv"), "--top-k", "5"]) == 0
    printed = capsys.readouterr().out
    assert "1 ok" in printed and "1 unchanged" in printed and "2 unmatched" in printed
    table = pd.read_csv(tmp_path / "out.tsv", sep="\t", dtype={"layer": str}, keep_default_na=False).set_index("layer")
    assert table.loc["0", "delta_status"] == "unchanged" and float(table.loc["0", "delta_relative_norm"]) == 0.0
    dw = tuned["2.weight"].double().numpy() - base["2.weight"].double().numpy()
    values = np.sort(np.linalg.svd(dw, compute_uv=False) ** 2)
    assert table.loc["2", "delta_status"] == "ok"
    assert float(table.loc["2", "delta_lambda_max"]) == pytest.approx(values[-1], rel=1e-9)
    assert float(table.loc["2", "delta_stable_rank"]) == pytest.approx(values.sum() / values[-1], rel=1e-9)
    assert float(table.loc["2", "delta_relative_norm"]) == pytest.approx(
        np.linalg.norm(dw) / np.linalg.norm(base["2.weight"].double().numpy()), rel=1e-9)
    assert "shape (12, 80) differs from the base's (10, 80)" in table.loc["4", "delta_reason"]
    assert table.loc["extra", "delta_reason"] == "not in the base"


def test_compare_an_adapter_folder_and_bad_input(tmp_path, capsys):
    import peft
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = net()
    save_file(model.state_dict(), str(tmp_path / "base.safetensors"))
    lora = peft.get_peft_model(model, peft.LoraConfig(r=3, lora_alpha=6, target_modules=["2"], init_lora_weights=False))
    lora.save_pretrained(str(tmp_path / "lora"))
    b = lora.base_model.model[2].lora_B["default"].weight.detach().double().numpy()
    a = lora.base_model.model[2].lora_A["default"].weight.detach().double().numpy()
    assert main(["compare", str(tmp_path / "lora"), str(tmp_path / "base.safetensors"),
                 "-o", str(tmp_path / "lora.tsv")]) == 0
    table = pd.read_csv(tmp_path / "lora.tsv", sep="\t", dtype={"layer": str}, keep_default_na=False).set_index("layer")
    values = np.sort(np.linalg.svd(2.0 * b @ a, compute_uv=False) ** 2)[-3:]
    assert int(table.loc["2", "delta_num_evals"]) == 3
    assert float(table.loc["2", "delta_lambda_max"]) == pytest.approx(values[-1], rel=1e-5)
    assert table.loc["0", "delta_status"] == "unchanged"
    capsys.readouterr()

    other = torch.nn.Sequential(torch.nn.Linear(3, 3))
    save_file({"w.weight": other[0].weight.detach().contiguous()}, str(tmp_path / "other.safetensors"))
    assert main(["compare", str(tmp_path / "other.safetensors"), str(tmp_path / "base.safetensors")]) == 2
    assert "no layer in common" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "missing.pt"), str(tmp_path / "base.safetensors")]) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err
