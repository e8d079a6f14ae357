"""The workflow on a zoo of a base, a full fine-tune and a LoRA adapter (zoo column base)."""
import copy
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from zooscope.analysis.delta import DELTA_COLUMNS, DELTA_METRICS
from zooscope.analysis.metrics import LAYER_COLUMNS

import torch
import peft

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
TARGETS = ("results/zoo/models.tsv", "results/zoo/regressions.tsv")


def snakemake(workdir, *args, check=True):
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True,
                            timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def net():
    return torch.nn.Sequential(torch.nn.Linear(64, 120), torch.nn.ReLU(), torch.nn.Linear(120, 100),
                               torch.nn.ReLU(), torch.nn.Linear(100, 10))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from safetensors.torch import save_file

    workdir = tmp_path_factory.mktemp("finetune")
    (workdir / "weights").mkdir()
    torch.manual_seed(0)
    base = net()
    save_file(base.state_dict(), str(workdir / "weights" / "base.safetensors"))
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned[2].weight.add_(0.05 * torch.randn_like(tuned[2].weight))
        tuned[4].weight.add_(0.05 * torch.randn_like(tuned[4].weight))
    save_file(tuned.state_dict(), str(workdir / "weights" / "tuned.safetensors"))
    lora = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["2"],
                                                                    init_lora_weights=False))
    lora.save_pretrained(str(workdir / "weights" / "lora"))
    torch.manual_seed(1)
    save_file(torch.nn.Sequential(torch.nn.Linear(5, 7)).state_dict(), str(workdir / "weights" / "other.safetensors"))
    (workdir / "zoo.tsv").write_text(
        "model\tseries\tsource\taccuracy\tbase\tshards\n"
        "base\tmlp\tfile:weights/base.safetensors\t80\t\t\n"
        "tuned\tmlp\tfile:weights/tuned.safetensors\t85\tbase\t2\n"  # sharded: the merge job computes the updates
        "lora\tmlp\tpeft:weights/lora\t83\tbase\t\n"
        "solo\tother\tfile:weights/other.safetensors\t50\t\t\n")
    (workdir / "config.yaml").write_text("zoo: zoo.tsv\nesd: {delta_top_k: 4}\n")
    snakemake(workdir, "--cores", "2", *TARGETS)
    return workdir


def test_layers_tables_have_delta_columns_for_models_with_a_base(zoo):
    tuned = pd.read_csv(zoo / "results/metrics/tuned/layers.tsv", sep="\t", dtype={"layer": str})
    assert list(tuned.columns) == [*LAYER_COLUMNS, *DELTA_COLUMNS]
    statuses = dict(zip(tuned["layer"], tuned["delta_status"]))
    assert statuses == {"0": "unchanged", "2": "ok", "4": "skipped"}  # the head: 10 eigenvalues < 50
    base = pd.read_csv(zoo / "results/metrics/base/layers.tsv", sep="\t")
    assert list(base.columns) == list(LAYER_COLUMNS)
    lora = pd.read_csv(zoo / "results/metrics/lora/layers.tsv", sep="\t", dtype={"layer": str}).set_index("layer")
    assert lora.loc["2", "delta_num_evals"] == 4 and lora.loc["0", "delta_status"] == "unchanged"
    # the adapter's esd job ran after its base's: its two unadapted layers came from the shared store
    assert "3 layers on cpu (numpy), 0 reused from the cache, 2 from the shared store, 1 computed" in \
        (zoo / "logs/esd/lora.log").read_text()
    index = json.loads((zoo / "results/esd/lora/index.json").read_text())
    assert [r["route"] for r in index["delta"]["layers"] if r["status"] == "ok"] == ["low-rank"]


def test_models_and_regressions_cover_the_delta_metrics(zoo):
    models = pd.read_csv(zoo / "results/zoo/models.tsv", sep="\t", keep_default_na=False, na_values=[""]).set_index("model")
    assert all(column in models.columns for column in ("base", *DELTA_METRICS))
    assert models.loc["tuned", "base"] == "base" and models.loc["lora", "base"] == "base"
    assert np.isnan(models.loc["base", "delta_relative_norm"])
    tuned = pd.read_csv(zoo / "results/metrics/tuned/layers.tsv", sep="\t")
    assert models.loc["tuned", "delta_relative_norm"] == pytest.approx(tuned["delta_relative_norm"].mean(), rel=1e-9)
    regressions = pd.read_csv(zoo / "results/zoo/regressions.tsv", sep="\t")
    assert set(DELTA_METRICS) <= set(regressions["metric"])


def test_a_base_of_another_architecture_fails_naming_the_model(zoo, tmp_path):
    workdir = tmp_path / "bad"
    workdir.mkdir()
    (workdir / "weights").symlink_to(zoo / "weights")
    (workdir / "zoo.tsv").write_text("model\tseries\tsource\taccuracy\tbase\n"
                                     "solo\tother\tfile:weights/other.safetensors\t50\t\n"
                                     "tuned\tmlp\tfile:weights/tuned.safetensors\t85\tsolo\n")
    (workdir / "config.yaml").write_text("zoo: zoo.tsv\n")
    result = snakemake(workdir, "--cores", "1", *TARGETS, check=False)
    assert result.returncode != 0
    log = (workdir / "logs/esd/tuned.log").read_text()
    assert "model 'tuned' and its base 'solo' have no layer in common" in log


def test_lint_is_clean(zoo):
    result = snakemake(zoo, "--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_new_base_layer_recomputes_only_the_updates_it_changes(zoo):
    """Runs last: it changes the base. Its first layer changes: the fine-tunes' own spectra are
    reused (the sharded one's shard jobs do not run), their update of that layer is computed, the
    other updates come from the cache."""
    from safetensors.torch import load_file, save_file

    shard_logs = sorted((zoo / "logs/esd").glob("tuned.*-of-2.log"))
    assert len(shard_logs) == 2
    before = [path.stat().st_mtime_ns for path in shard_logs]
    weights = load_file(str(zoo / "weights" / "base.safetensors"))
    weights["0.weight"] = weights["0.weight"] * 1.5
    save_file(weights, str(zoo / "weights" / "base.safetensors"))
    snakemake(zoo, "--cores", "2", *TARGETS)
    log = (zoo / "logs/esd/tuned.log").read_text()
    assert [path.stat().st_mtime_ns for path in shard_logs] == before  # its own spectra: not even a job
    # the adapter is refetched onto the new base: its layer 0 is the new one, its other layers reused
    assert "3 layers on cpu (numpy), 2 reused from the cache" in (zoo / "logs/esd/lora.log").read_text()
    assert "tuned against base base: 3 layers, 2 updates reused from the cache, 0 unchanged" in log
    tuned = pd.read_csv(zoo / "results/metrics/tuned/layers.tsv", sep="\t", dtype={"layer": str}).set_index("layer")
    # W_tuned = W_base(old) and W_base(new) = 1.5 W_base(old): ||dW|| / ||W_base(new)|| = 0.5 / 1.5
    assert tuned.loc["0", "delta_relative_norm"] == pytest.approx(1 / 3, rel=1e-6)
