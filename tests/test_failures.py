"""The fault-injection matrix (docs/failures.md): one workflow run over a zoo with one model per
failure class next to healthy ones. For each class the run completes every other model, the zoo
tables and the run summary list the failure, and after its input is fixed the rerun recomputes
that model and the zoo tables only (the exact job list of a dry run). Then the interrupted runs:
Ctrl-C (SIGINT) and SIGKILL of the snakemake process, with a slow job."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from conftest import REPO
from zooscope.jobs import MEMORY_LIMIT_ENV
from zooscope.report.run_summary import ModelOutcome, RunSummary

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
HEADER = "model\tseries\tsource\taccuracy\tepochs\n"
# Enough for the tiny models' esd and fit jobs, too little for the eigenvalues of a 3000 x 3000 matrix
# (its float64 copy and Gram matrix: about 140 MB, held for seconds). Fetch jobs are not capped.
MEMORY_CAP_MB = 100
# A model that trains for this many epochs is still training when the test kills its job.
FOREVER = 100000
ZOO_TABLES = {"aggregate", "plot_series", "discrimination", "audit", "all"}
MODEL_JOBS = ("fetch", "esd", "fit", "plot_esd")


def rng(seed):
    return np.random.default_rng(seed)


def healthy(seed, scale=1.0):
    r = rng(seed)
    return {"fc1.weight": (r.standard_t(3, (120, 80)) * scale).astype(np.float32),
            "fc2.weight": r.standard_normal((90, 120)).astype(np.float32)}


class Refused:
    """Pickled as a call of os.getpid: the weights-only unpickler must refuse it."""

    def __reduce__(self):
        return (os.getpid, ())


def write_pickle(path):
    import torch

    torch.save({"fc.weight": torch.zeros(3, 3), "payload": Refused()}, path)


@dataclass(frozen=True)
class Case:
    """One failure class: its model's source, how the test breaks it, what the tables say
    (``stage`` of a failed model, or "" for a model that completes with bad layers), and the jobs
    that the fixed input reruns for it."""

    model: str
    source: str
    stage: str
    reason: str  # a fragment of the reason in models.tsv (or of the layers' reasons)
    break_input: callable
    fix_input: callable
    reruns: tuple = MODEL_JOBS


def _file(name):
    return f"file:weights/{name}"


def _save(name, tensors):
    return lambda w: save_file(tensors, str(w / "weights" / name))


def _replace_row(model, new_source, epochs=""):
    def fix(w):
        sheet = w / "zoo.tsv"
        lines = [line if not line.startswith(f"{model}\t") else
                 f"{model}\ts\t{new_source}\t71\t{epochs}" for line in sheet.read_text().splitlines()]
        sheet.write_text("\n".join(lines) + "\n")
    return fix


def _nan_layer():
    bad = rng(11).standard_normal((100, 80)).astype(np.float32)
    bad[3, 4] = np.nan
    return {**healthy(10), "bad.weight": bad}


CASES = [
    Case("missing", _file("missing.safetensors"), "fetch", "weights file not found",
         lambda w: None, _save("missing.safetensors", healthy(20))),
    Case("corrupt", _file("corrupt.safetensors"), "fetch", "is not a weights file zooscope reads",
         lambda w: (w / "weights" / "corrupt.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"not a header"),
         _save("corrupt.safetensors", healthy(21))),
    Case("pickle", _file("pickle.pt"), "fetch", "refusing to load weights/pickle.pt: loading it would run pickled code",
         lambda w: write_pickle(w / "weights" / "pickle.pt"), _replace_row("pickle", _file("pickle.safetensors")),
         ),
    Case("hub", "torchvision:zooscope_no_such_net", "fetch", "zooscope_no_such_net",
         lambda w: None, _replace_row("hub", _file("hub.safetensors"))),
    Case("nanlayer", _file("nanlayer.safetensors"), "", "NaN or Inf",
         _save("nanlayer.safetensors", _nan_layer()), _save("nanlayer.safetensors", healthy(22))),
    Case("degenerate", _file("degenerate.safetensors"), "", "degenerate spectrum",
         _save("degenerate.safetensors", {**healthy(12), "zero.weight": np.zeros((100, 80), np.float32)}),
         _save("degenerate.safetensors", healthy(23))),
    Case("small", _file("small.safetensors"), "", "eigenvalues < min_evals=50",
         _save("small.safetensors", {**healthy(13), "tiny.weight": rng(3).standard_normal((10, 30)).astype(np.float32)}),
         _save("small.safetensors", healthy(24))),
    Case("nothing", _file("nothing.safetensors"), "fit", "no layer could be fitted",
         _save("nothing.safetensors", {"a.weight": rng(4).standard_normal((10, 30)).astype(np.float32),
                                       "b.weight": rng(5).standard_normal((20, 40)).astype(np.float32)}),
         _save("nothing.safetensors", healthy(25))),
    # out of memory: the esd job fails under the memory cap; the fix (more memory: no cap) keeps
    # the fetched weights, so the rerun starts at esd
    Case("oom", _file("oom.safetensors"), "esd", "out of memory",
         _save("oom.safetensors", {"fc.weight": rng(6).standard_normal((3000, 3000)).astype(np.float32)}),
         lambda w: None, reruns=("esd", "fit", "plot_esd")),
    Case("killed", "train:mlp", "fetch", "killed by SIGKILL",
         lambda w: None, _replace_row("killed", "train:mlp", epochs="1")),
]
GOOD = ("good0", "good1", "good2")
# A model without a layer that can be fitted is "unfitted", not failed: a property of its weights.
UNFITTED = ("nothing",)
FAILED = [case.model for case in CASES if case.stage and case.model not in UNFITTED]


def make_zoo(workdir):
    (workdir / "weights").mkdir(parents=True)
    rows = [f"{model}\ts\t{_file(model + '.safetensors')}\t{70 + 5 * i}\t" for i, model in enumerate(GOOD)]
    for i, model in enumerate(GOOD):
        save_file(healthy(i, scale=1.0 + i), str(workdir / "weights" / f"{model}.safetensors"))
    for case in CASES:
        case.break_input(workdir)
        rows.append(f"{case.model}\ts\t{case.source}\t71\t{FOREVER if case.model == 'killed' else ''}")
    save_file(healthy(30), str(workdir / "weights" / "pickle.safetensors"))  # the fixes' replacements
    save_file(healthy(31), str(workdir / "weights" / "hub.safetensors"))
    (workdir / "zoo.tsv").write_text(HEADER + "\n".join(rows) + "\n")
    (workdir / "config.yaml").write_text("zoo: zoo.tsv\nesd:\n  randomize: false\n")
    return workdir


def run_env(**extra):
    """The test's environment without a memory cap of the user's, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key != MEMORY_LIMIT_ENV}
    return {**env, **extra}


def snakemake(workdir, *args, env=None, check=True):
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True,
                            timeout=600, env=env or run_env())
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def processes_with_open(path: Path) -> dict[int, int]:
    """pid -> parent pid of every process that has ``path`` open (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == str(path) for fd in (entry / "fd").iterdir()):
                found[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    return found


def wait_for_worker(log: Path, process, timeout=120) -> tuple[int, int]:
    """(job pid, worker pid) of the per-model job writing ``log``: the worker is its child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"snakemake ended ({process.returncode}) before the job of {log} ran")
        holders = processes_with_open(log.resolve()) if log.exists() else {}
        for pid, parent in holders.items():
            if parent in holders:
                return parent, pid
        time.sleep(0.1)
    raise AssertionError(f"no job worker wrote {log} within {timeout} s")


def dry_run_jobs(workdir, env=None) -> set[tuple[str, str]]:
    """(rule, model or "") of every job a dry run would run."""
    return _jobs_of(snakemake(workdir, "--cores", "2", "-n", env=env).stdout)


def _jobs_of(output: str) -> set[tuple[str, str]]:
    """The jobs of a dry run's output, from its job blocks ("rule NAME:" and, for a job with
    wildcards, its "wildcards: model=..." line)."""
    jobs, job = set(), None
    for line in output.splitlines():
        rule = re.fullmatch(r"(?:local)?rule (\w+):", line.strip())
        model = re.match(r"\s+wildcards:.*\bmodel=([^,\s]+)", line)
        if rule:
            jobs |= {job} if job else set()
            job = (rule.group(1), "")
        elif model and job:
            job = (job[0], model.group(1))
    return jobs | ({job} if job else set())


def zoo_jobs():
    return {(rule, "") for rule in ZOO_TABLES}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    workdir = make_zoo(tmp_path_factory.mktemp("matrix"))
    env = run_env(HF_HUB_OFFLINE="1", TORCH_HOME=str(workdir / "torch-home"), **{MEMORY_LIMIT_ENV: str(MEMORY_CAP_MB)})
    process = subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    _, worker = wait_for_worker(workdir / "logs" / "fetch" / "killed.log", process)
    os.kill(worker, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    output, _ = process.communicate(timeout=600)
    return workdir, process.returncode, output


def read_table(path):
    return pd.read_csv(path, sep="\t", keep_default_na=False).set_index("model")


def test_the_run_completes_every_other_model_and_exits_1(matrix):
    workdir, returncode, output = matrix
    assert returncode == 1, output
    models = read_table(workdir / "results" / "zoo" / "models.tsv")
    assert list(models.index) == [*GOOD, *(case.model for case in CASES)]
    for model in [*GOOD, *(case.model for case in CASES if not case.stage)]:
        assert models.loc[model, "status"] == "ok", model
        assert (workdir / "results" / "zoo" / "audit" / f"{model}.md").is_file()
    assert set(models.loc[list(UNFITTED), "status"]) == {"unfitted"}
    # every zoo-wide output exists: the tables were made over what completed
    for name in ("regressions.tsv", "discrimination.tsv", "audit.tsv", "summary.html"):
        assert (workdir / "results" / "zoo" / name).is_file()


@pytest.mark.parametrize("case", CASES, ids=[case.model for case in CASES])
def test_the_tables_list_the_failure(matrix, case):
    workdir, _, output = matrix
    models = read_table(workdir / "results" / "zoo" / "models.tsv")
    audit = read_table(workdir / "results" / "zoo" / "audit.tsv")
    summary = (workdir / "logs" / "zoo" / "run-summary.txt").read_text()
    row = models.loc[case.model]
    status = "unfitted" if case.model in UNFITTED else "failed"
    if case.stage:
        assert (row["status"], row["failed_stage"]) == (status, case.stage)
        assert case.reason in row["reason"]
        assert (audit.loc[case.model, "status"], audit.loc[case.model, "failed_stage"]) == (status, case.stage)
        assert (f"  {case.model}: {case.stage} failed: {row['reason']}" if status == "failed"
                else f"  {case.model}: {row['reason']}") in summary
        assert "weights_only=False" not in output + row["reason"]
        assert row["accuracy"] == 71  # the sheet's facts stay
        # its reason once on the console from the job that failed (none for a model without
        # fitted layers: no job failed), and once in the run summary
        assert output.count(row["reason"]) == (1 if case.stage == "fit" else 2), output
    else:
        assert row["status"] == "ok"
        layers = pd.read_csv(workdir / "results" / "metrics" / case.model / "layers.tsv", sep="\t",
                             keep_default_na=False)
        bad = layers[layers["reason"].str.contains(case.reason, regex=False)]
        assert len(bad) == 1
        assert re.search(rf"  {case.model}: 1 (failed|skipped): .*{re.escape(case.reason)}", summary)
        # a row that was not fitted keeps every field that is known
        expected_shape = {"nanlayer": (100, 80), "degenerate": (100, 80), "small": (30, 10)}[case.model]
        assert (bad.iloc[0]["N"], bad.iloc[0]["M"], bad.iloc[0]["num_evals"]) == (*expected_shape, expected_shape[1])
        assert bad.iloc[0]["type"] == "Linear" and bad.iloc[0]["depth"] != ""


def test_regressions_use_the_completed_models_and_count_the_others(matrix):
    workdir, _, _ = matrix
    models = read_table(workdir / "results" / "zoo" / "models.tsv")
    regressions = pd.read_csv(workdir / "results" / "zoo" / "regressions.tsv", sep="\t").set_index("metric")
    completed = models[models["status"] == "ok"]
    assert regressions.loc["log_norm", "num_left_out"] == len(FAILED)
    assert regressions.loc["log_norm", "n"] == len(completed)
    slope, _ = np.polyfit(completed["log_norm"].astype(float), completed["accuracy"].astype(float), 1)
    assert regressions.loc["log_norm", "slope"] == pytest.approx(slope, rel=1e-6)


def test_the_next_run_retries_exactly_the_failed_jobs(matrix):
    workdir, _, _ = matrix
    env = run_env(HF_HUB_OFFLINE="1", **{MEMORY_LIMIT_ENV: str(MEMORY_CAP_MB)})
    expected = zoo_jobs()
    for case in CASES:
        if case.stage in ("fetch", "esd"):
            expected |= {(rule, case.model) for rule in case.reruns}
    assert dry_run_jobs(workdir, env) == expected


@pytest.fixture(scope="module")
def fixed(matrix, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fixed") / "zoo"
    shutil.copytree(matrix[0], workdir, symlinks=True)
    for case in CASES:
        case.fix_input(workdir)
    return workdir


def test_fixing_the_inputs_reruns_only_those_models_and_the_tables(fixed):
    expected = zoo_jobs() | {(rule, case.model) for case in CASES for rule in case.reruns}
    assert dry_run_jobs(fixed) == expected


def test_after_the_fixed_run_every_model_completed_and_nothing_is_left(fixed):
    result = snakemake(fixed, "--cores", "2", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    models = read_table(fixed / "results" / "zoo" / "models.tsv")
    assert set(models["status"]) == {"ok"}
    assert (models["reason"] == "").all()
    assert dry_run_jobs(fixed) == set()


# ------------------------------------------------------------------------------------- units


def test_the_failure_counter_is_the_attempt_parameter(tmp_path):
    from zooscope.failures import FAILED, attempt, count_failure, counter_path, model_status, read_failure

    output = tmp_path / "meta.json"
    assert attempt(output) == 0 and read_failure(output) is None  # nothing yet
    output.write_text(json.dumps({"model": "m", FAILED: {"stage": "fetch", "reason": "gone", "attempt": 0}}))
    count_failure(output)
    count_failure(output)
    assert attempt(output) == 2 and counter_path(output).name == ".meta.json.failures"
    assert read_failure(output).reason == "gone"
    output.write_text(json.dumps({"model": "m"}))  # a completed output leaves the count alone
    assert attempt(output) == 2 and read_failure(output) is None
    assert model_status({FAILED: {"stage": "esd", "reason": "out of memory"}}) == ("failed", "esd", "out of memory")
    assert model_status({"num_fitted": 0, "num_skipped": 2, "num_failed": 1, "num_rows": 3})[:2] == ("unfitted", "fit")
    assert model_status({"num_fitted": 1}) == ("ok", "", "")


def test_a_failed_jacobian_stage_fails_the_run(tmp_path):
    from zooscope.io import write_json
    from zooscope.report.run_summary import run_summary

    write_json(tmp_path / "m.fit.json", {"model": "m", "num_fitted": 2, "num_rows": 2})
    write_json(tmp_path / "m.jac.json", {"model": "m", "metrics": {}, "failed": {"stage": "jacobian", "reason": "x"}})
    summary = run_summary("z", ["m"], lambda m: str(tmp_path / f"{m}.fit.json"),
                          jacobian_path=lambda m: str(tmp_path / f"{m}.jac.json"))
    assert summary.exit_status == 1 and "  m: jacobian failed: x" in summary.text()


def outcome(model, status="ok", problems=None, stage="", reason=""):
    return ModelOutcome(model, status, stage, reason, problems or {})


@pytest.mark.parametrize("outcomes, policy, status", [
    ([outcome("a"), outcome("b", problems={"skipped": {"few": 2}})], "fail", 0),  # skips never fail
    ([outcome("a", problems={"failed": {"NaN": 1}})], "warn", 0),
    ([outcome("a", problems={"failed": {"NaN": 1}})], "fail", 1),
    ([outcome("a"), outcome("b", "failed", stage="fetch", reason="gone")], "warn", 1),
    ([outcome("a", "unfitted", {"skipped": {"few": 2}}, "fit", "no layer could be fitted")], "fail", 0),
])
def test_exit_status_rule(outcomes, policy, status):
    summary = RunSummary("z", tuple(outcomes), policy)
    assert summary.exit_status == status
    assert f"Exit status {status}" in summary.text() or (status == 0 and "Exit status" not in summary.text())


# ------------------------------------------------------------------------- interrupted runs


def slow_zoo(workdir):
    workdir.mkdir(parents=True)
    (workdir / "zoo.tsv").write_text(HEADER + f"slow\ts\ttrain:mlp\t\t{FOREVER}\n")
    (workdir / "config.yaml").write_text("zoo: zoo.tsv\nesd:\n  randomize: false\n")
    return workdir


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_an_interrupted_run_leaves_no_output_and_no_orphan(tmp_path, how):
    workdir = slow_zoo(tmp_path / how)
    process = subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), "--cores", "1"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=run_env(), start_new_session=True)
    job, worker = wait_for_worker(workdir / "logs" / "fetch" / "slow.log", process)
    if how == "SIGINT":  # Ctrl-C: the terminal signals the whole foreground process group
        os.killpg(process.pid, signal.SIGINT)
    else:  # only snakemake dies; its job must notice and stop
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while (alive(job) or alive(worker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(job) and not alive(worker)
    folder = workdir / "resources" / "models" / "slow"
    assert not folder.exists() or not any(folder.iterdir())  # no output, no failure record, no temporary
    if how == "SIGKILL":
        snakemake(workdir, "--unlock")
    assert ("fetch", "slow") in dry_run_jobs(workdir)


# ----------------------------------------------------------------- one results folder per zoo


def test_a_second_zoo_shares_the_models_and_keeps_its_own_tables(matrix):
    """A second sheet in the same folder: its model shared with the first zoo is not recomputed,
    its new model is, and its tables go to results/other/, beside results/zoo/."""
    workdir, _, _ = matrix
    save_file(healthy(40), str(workdir / "weights" / "extra.safetensors"))
    (workdir / "other.tsv").write_text(HEADER + f"good0\ts\t{_file('good0.safetensors')}\t70\t\n"
                                       f"extra\ts\t{_file('extra.safetensors')}\t90\t\n")
    before = (workdir / "results" / "zoo" / "models.tsv").read_bytes()
    output = snakemake(workdir, "--cores", "2", "-n", "--config", "zoo=other.tsv").stdout
    assert "results/other/models.tsv" in output and "results/zoo/" not in output
    expected = zoo_jobs() | {(rule, "extra") for rule in MODEL_JOBS}
    assert _jobs_of(output) == expected
    assert (workdir / "results" / "zoo" / "models.tsv").read_bytes() == before


def test_a_zoo_named_like_a_shared_folder_is_refused(tmp_path):
    from zooscope.config import ConfigError
    from zooscope.failures import results_folder

    assert results_folder("zoos/demo.tsv") == ("demo", "results/demo")
    assert results_folder("zoos/demo.tsv", "out/mine") == ("mine", "out/mine")
    with pytest.raises(ConfigError, match="--config results=results/OTHER_NAME"):
        results_folder("zoos/esd.tsv")
