"""Workflow tests: the real snakemake CLI on a tiny zoo in a temporary working directory."""
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from conftest import REPO
from zooscope.analysis.metrics import LAYER_COLUMNS

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
HEADER = "model\tseries\tsource\taccuracy\twidth\tdepth\tepochs\n"


def snakemake(workdir, *args, check=True):
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args],
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def write_weights(path, seed, scale):
    """A small 'pretrained' model as a safetensors file: three Linear layers and a bias."""
    rng = np.random.default_rng(seed)
    heavy = rng.standard_t(df=3, size=(120, 80)) * scale  # heavy-tailed entries
    save_file({
        "fc1.weight": heavy.astype(np.float32),
        "fc1.bias": np.zeros(120, np.float32),
        "fc2.weight": rng.standard_normal((90, 120)).astype(np.float32) * scale,
        "head.weight": rng.standard_normal((10, 90)).astype(np.float32),
    }, str(path))


def make_zoo(workdir, extra_rows=""):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "weights").mkdir(exist_ok=True)
    rows = []
    for i, accuracy in enumerate((70.0, 74.0, 79.0)):
        write_weights(workdir / "weights" / f"f{i}.safetensors", seed=i, scale=1.0 + 0.5 * i)
        rows.append(f"file{i}\tfiles\tfile:weights/f{i}.safetensors\t{accuracy}\t\t\t\n")
    rows.append("rand\tbaseline\trandom:mlp\t\t64\t2\t\n")
    rows.append("tiny\ttrained\ttrain:mlp\t\t64\t1\t2\n")
    (workdir / "zoo.tsv").write_text(HEADER + "".join(rows) + extra_rows)
    (workdir / "config.yaml").write_text("zoo: zoo.tsv\n")
    return workdir


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = make_zoo(tmp_path_factory.mktemp("zoo"))
    snakemake(workdir, "--cores", "2")
    return workdir


def test_run_produces_every_artifact(finished_run):
    w = finished_run
    for model in ("file0", "file1", "file2", "rand", "tiny"):
        for name in ("model.safetensors", "layers.json", "meta.json"):
            assert (w / "resources" / "models" / model / name).is_file()
        assert (w / "results" / "esd" / model / "index.json").is_file()
        assert (w / "results" / "metrics" / model / "summary.json").is_file()
        assert any((w / "results" / "plots" / "esd" / model).glob("*.png"))
        assert (w / "logs" / "esd" / f"{model}.log").is_file()
    layers = pd.read_csv(w / "results" / "metrics" / "file0" / "layers.tsv", sep="\t", keep_default_na=False)
    assert list(layers.columns) == list(LAYER_COLUMNS)
    assert list(layers["layer"]) == ["fc1", "fc2", "head"]
    assert list(layers["status"]) == ["ok", "ok", "skipped"]  # head has 10 < 50 eigenvalues
    assert (w / "results" / "esd" / "file0" / "fc1.npy").is_file()
    coverage = pd.read_csv(w / "results" / "metrics" / "file0" / "coverage.tsv", sep="\t", keep_default_na=False)
    assert list(coverage.columns) == ["tensor", "shape", "dtype", "analysed", "layer", "reason", "detail"]
    assert coverage.set_index("tensor")[["shape", "dtype", "analysed", "reason"]].to_dict("index") == {
        "fc1.bias": {"shape": "120", "dtype": "F32", "analysed": False, "reason": "bias"},
        "fc1.weight": {"shape": "120x80", "dtype": "F32", "analysed": True, "reason": ""},
        "fc2.weight": {"shape": "90x120", "dtype": "F32", "analysed": True, "reason": ""},
        "head.weight": {"shape": "10x90", "dtype": "F32", "analysed": False, "reason": "below min_evals"},
    }
    for series in ("files", "baseline", "trained"):
        assert (w / "results" / "zoo" / "plots" / "series" / series / "correlation_flow.png").is_file()


def test_models_and_regressions_tables(finished_run):
    models = pd.read_csv(finished_run / "results" / "zoo" / "models.tsv", sep="\t")
    assert list(models["model"]) == ["file0", "file1", "file2", "rand", "tiny"]
    assert list(models.loc[:2, "accuracy"]) == [70.0, 74.0, 79.0]
    assert list(models.loc[:2, "num_tensors"]) == [4] * 3 and list(models.loc[:2, "num_tensors_analysed"]) == [2] * 3
    assert list(models.loc[:2, "tensors_left_out"]) == ["bias: 1; below min_evals: 1"] * 3
    # the trained and the random model get a measured accuracy on the digits test split
    assert models.loc[4, "accuracy"] > models.loc[3, "accuracy"]
    regressions = pd.read_csv(finished_run / "results" / "zoo" / "regressions.tsv", sep="\t")
    files = regressions[regressions["series"] == "files"].set_index("metric")
    # the file models' log_norm grows with the scale, as does accuracy: recompute independently
    subset = models[models["series"] == "files"]
    slope, intercept = np.polyfit(subset["log_norm"], subset["accuracy"], 1)
    assert files.loc["log_norm", "n"] == 3
    assert files.loc["log_norm", "slope"] == pytest.approx(slope, rel=1e-6)
    assert files.loc["log_norm", "intercept"] == pytest.approx(intercept, rel=1e-6)
    assert files.loc["log_norm", "kendall_tau"] == pytest.approx(1.0)


def test_rerun_has_nothing_to_do(finished_run):
    result = snakemake(finished_run, "--cores", "2", "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_lint_is_clean(finished_run):
    result = snakemake(finished_run, "--lint", check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Lints for" not in output, output


def test_fit_option_change_reruns_fits_not_eigenvalues(finished_run):
    result = snakemake(finished_run, "--cores", "2", "-n", "--config", "zoo=zoo.tsv", "fit={min_evals: 20}")
    jobs = job_counts(result.stdout)
    assert jobs.get("esd", 0) == 0 and jobs.get("fetch", 0) == 0
    assert jobs["fit"] == 5


def job_counts(dry_run_output):
    """Job counts per rule from the 'Job stats' table of a dry run."""
    counts, in_table = {}, False
    for line in dry_run_output.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and parts and parts[0] == "total":
            break
        if in_table and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def test_growing_the_zoo_reruns_only_the_new_model_and_the_aggregates(finished_run, tmp_path):
    workdir = tmp_path / "grown"
    shutil.copytree(finished_run, workdir, symlinks=True)
    sheet = workdir / "zoo.tsv"
    write_weights(workdir / "weights" / "f3.safetensors", seed=3, scale=3.0)
    sheet.write_text(sheet.read_text() + "file3\tfiles\tfile:weights/f3.safetensors\t83.0\t\t\t\n")
    jobs = job_counts(snakemake(workdir, "--cores", "2", "-n").stdout)
    assert jobs == {"aggregate": 1, "all": 1, "esd": 1, "fetch": 1, "fit": 1, "plot_esd": 1,
                    "plot_series": 3, "discrimination": 1, "audit": 1}


def test_identical_inputs_give_byte_identical_tables(finished_run, tmp_path):
    second = make_zoo(tmp_path / "again")
    snakemake(second, "--cores", "1")
    for table in ("results/zoo/models.tsv", "results/zoo/regressions.tsv",
                  "results/metrics/tiny/layers.tsv", "results/metrics/file1/layers.tsv",
                  "results/zoo/discrimination.tsv", "results/zoo/audit.tsv", "results/zoo/audit/tiny.md"):
        assert (finished_run / table).read_bytes() == (second / table).read_bytes(), table


def write_degenerate_weights(path):
    """One good layer and one of each bad kind: NaN entries, all zeros, rank one."""
    rng = np.random.default_rng(7)
    nan = rng.standard_normal((70, 60)).astype(np.float32)
    nan[5, 5] = np.nan
    rank_one = np.outer(rng.standard_normal(70), rng.standard_normal(60)).astype(np.float32)
    save_file({"good.weight": rng.standard_normal((70, 60)).astype(np.float32), "nan.weight": nan,
               "zero.weight": np.zeros((70, 60), np.float32), "rank1.weight": rank_one}, str(path))


def test_bad_models_fail_alone_with_a_clear_message(tmp_path):
    workdir = make_zoo(tmp_path / "bad", extra_rows=(
        "missing\tfiles\tfile:weights/nope.safetensors\t80\t\t\t\n"
        "corrupt\tfiles\tfile:weights/corrupt.safetensors\t81\t\t\t\n"
        "degenerate\tfiles\tfile:weights/degenerate.safetensors\t82\t\t\t\n"
        "nolayers\tfiles\tfile:weights/norms.pt\t83\t\t\t\n"
    ))
    import torch

    torch.save({"norm.weight": torch.ones(8), "norm.bias": torch.zeros(8), "steps": torch.tensor(3)},
               workdir / "weights" / "norms.pt")
    (workdir / "weights" / "corrupt.safetensors").write_bytes(b"\x00" * 100)
    write_degenerate_weights(workdir / "weights" / "degenerate.safetensors")
    result = snakemake(workdir, "--cores", "2", "--keep-going", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "missing" in output and "nope.safetensors" in output
    assert "corrupt" in output and "corrupt.safetensors" in output
    for model in ("file0", "file1", "file2", "rand", "tiny"):
        assert (workdir / "results" / "metrics" / model / "summary.json").is_file()
    assert "'nolayers': no analysable weight in file:weights/norms.pt" in output
    assert "norms.pt): 3 tensors: 0 analysed; left out: 1 bias, 1 norm, 1 integer buffer" in output
    # the failed models are records (zooscope.failures), without weights, listed in the zoo table
    models = pd.read_csv(workdir / "results" / "zoo" / "models.tsv", sep="\t", keep_default_na=False).set_index("model")
    for model in ("missing", "corrupt", "nolayers"):
        meta = json.loads((workdir / "resources" / "models" / model / "meta.json").read_text())
        assert meta["failed"]["stage"] == "fetch" and model in meta["failed"]["reason"]
        assert (workdir / "resources" / "models" / model / "model.safetensors").stat().st_size == 16
        assert models.loc[model, "status"] == "failed" and models.loc[model, "failed_stage"] == "fetch"
    # bad layers become rows with a status and a reason; the model itself completes
    layers = pd.read_csv(workdir / "results" / "metrics" / "degenerate" / "layers.tsv", sep="\t",
                         keep_default_na=False).set_index("layer")
    assert layers.loc["good", "status"] == "ok"
    assert layers.loc["nan", "status"] == "failed" and "NaN or Inf" in layers.loc["nan", "reason"]
    assert layers.loc["zero", "status"] == "failed" and "all eigenvalues are zero" in layers.loc["zero", "reason"]
    assert layers.loc["rank1", "status"] == "failed" and "degenerate spectrum" in layers.loc["rank1", "reason"]
    esd_log = (workdir / "logs" / "esd" / "degenerate.log").read_text()
    assert "nan" in esd_log and "NaN or Inf" in esd_log


def recorded_finished(workdir, output) -> bool:
    """Whether Snakemake has recorded the job of ``output`` as finished: its metadata record is
    written and its incomplete marker removed (.snakemake/metadata and .snakemake/incomplete hold
    one file per output, named by the urlsafe base64 of its path; snakemake.persistence)."""
    key = base64.urlsafe_b64encode(str(output.relative_to(workdir)).encode()).decode()
    state = workdir / ".snakemake"
    return (state / "metadata" / key).is_file() and not (state / "incomplete" / key).exists()


def test_interrupted_run_resumes_and_keeps_finished_work(tmp_path):
    workdir = make_zoo(tmp_path / "interrupted")
    process = subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    summaries = workdir / "results" / "metrics"
    deadline = time.monotonic() + 300
    finished = {}
    # Cut the power as soon as some summary's job is recorded as finished. Outputs are written by
    # atomic rename, so a recomputed file has a new inode (Snakemake itself may touch finished
    # outputs, which changes their mtime but not their inode).
    while not finished and time.monotonic() < deadline and process.poll() is None:
        finished = {path: path.stat().st_ino for path in summaries.glob("*/summary.json")
                    if recorded_finished(workdir, path)}
        if not finished:
            time.sleep(0.02)  # polling interval only: the condition above is what is waited for
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)  # the whole run, jobs included
    process.wait()
    assert finished and not (workdir / "results" / "zoo" / "models.tsv").exists()
    snakemake(workdir, "--unlock")  # a killed run leaves its lock behind
    snakemake(workdir, "--cores", "2", "--rerun-incomplete")
    assert (workdir / "results" / "zoo" / "models.tsv").is_file()
    assert {path: path.stat().st_ino for path in finished} == finished


def test_invalid_zoo_sheet_stops_before_any_job(tmp_path):
    workdir = make_zoo(tmp_path / "invalid", extra_rows="../escape\tfiles\tfile:x\t\t\t\t\n")
    result = snakemake(workdir, "--cores", "1", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "zoo.tsv" in output and "row 7" in output and "field 'model'" in output
    assert not (workdir / "resources").exists()


def test_rows_and_config_are_checked_before_any_job(tmp_path):
    """What only a fetch or Jacobian job used to find (an option the source does not take, a data set
    on a model that cannot be rebuilt) and an outdated config key stop the run when it is parsed."""
    workdir = make_zoo(tmp_path / "checked", extra_rows="hub\tfiles\ttorchvision:vgg11\t\t64\t\t\n")
    result = snakemake(workdir, "--cores", "1", check=False)
    assert result.returncode != 0
    assert ("row 7: model 'hub': option column 'width' does not apply to torchvision: sources"
            in result.stdout + result.stderr)
    workdir = make_zoo(tmp_path / "outdated")
    result = snakemake(workdir, "--cores", "1", "--config", "shard_mb=2", check=False)
    assert result.returncode != 0
    assert "key 'shard_mb' has moved into the 'esd:' group" in result.stdout + result.stderr
    for folder in (tmp_path / "checked", tmp_path / "outdated"):
        assert not (folder / "resources").exists()


def test_the_device_reaches_the_esd_job_and_switching_it_reruns_nothing(finished_run, tmp_path):
    """config esd.device is no rerun trigger (it changes eigenvalues by rounding only), yet the esd job
    computes where it says: cuda on a machine without a GPU fails there, naming the setting."""
    assert sum(job_counts(snakemake(finished_run, "-n", "--config", "esd={device: auto}").stdout).values()) == 0
    # the shared store (esd.shared_cache) is where spectra are kept, not what they are: no trigger either
    for store in ("elsewhere", "null"):
        dry = snakemake(finished_run, "-n", "--config", f"esd={{shared_cache: {store}}}").stdout
        assert sum(job_counts(dry).values()) == 0, store
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU: an esd job with esd.device cuda would succeed")
    workdir = make_zoo(tmp_path / "cuda")
    result = snakemake(workdir, "results/esd/file0/index.json", "--cores", "1", "--config", "esd={device: cuda}",
                       check=False)
    assert result.returncode != 0
    log = (workdir / "logs" / "esd" / "file0.log").read_text()
    assert "config esd.device: cuda, but this job sees no CUDA GPU" in log
