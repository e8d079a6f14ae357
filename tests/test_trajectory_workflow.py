"""The workflow on training trajectories (zoo column step): the settling table and figures of each
run, and that adding a checkpoint to one run reruns exactly that checkpoint, that run's trajectory
and the zoo-wide tables (the dry run's job list, parsed)."""
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
HEADER = "model\tseries\tsource\taccuracy\tstep\n"


def snakemake(workdir, *args):
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def write_checkpoint(path, seed, progress):
    """A checkpoint of a 'run': heavy-tailed structure grown into noise as ``progress`` goes 0 -> 1."""
    rng = np.random.default_rng(seed)
    noise = [rng.standard_normal(shape) for shape in ((120, 80), (90, 120))]
    signal = [np.random.default_rng(99).standard_t(df=2.5, size=shape) for shape in ((120, 80), (90, 120))]
    save_file({name: (0.3 * n + progress * s).astype(np.float32)
               for name, n, s in zip(("fc1.weight", "fc2.weight"), noise, signal)}, str(path))


RUN_A = ((0, 0.0, 20.0), (10, 0.6, 70.0), (20, 1.0, 80.0))  # (step, progress, accuracy)
RUN_B = ((1, 0.2, 30.0), (2, 0.9, 60.0))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trajectory")
    (workdir / "weights").mkdir()
    rows = []
    for run, checkpoints in (("a", RUN_A), ("b", RUN_B)):
        for k, (step, progress, accuracy) in enumerate(checkpoints):
            write_checkpoint(workdir / "weights" / f"{run}{step}.safetensors", seed=10 * k + len(run), progress=progress)
            rows.append(f"{run}{step}\trun-{run}\tfile:weights/{run}{step}.safetensors\t{accuracy}\t{step}\n")
    (workdir / "zoo.tsv").write_text(HEADER + "".join(reversed(rows)))  # the sheet's order is not the steps'
    (workdir / "config.yaml").write_text("zoo: zoo.tsv\n")
    snakemake(workdir, "--cores", "2")
    return workdir


def test_trajectory_table_settles_each_metric_within_the_final_spread(finished):
    table = pd.read_csv(finished / "results/zoo/trajectories.tsv", sep="\t")
    models = pd.read_csv(finished / "results/zoo/models.tsv", sep="\t")
    assert list(table["series"].unique()) == ["run-a", "run-b"]
    assert set(table.loc[table["series"] == "run-a", "num_checkpoints"]) == {3}
    for series, group in table.groupby("series"):
        runs = models[models["series"] == series].assign(step=lambda f: f["model"].str[1:].astype(float)).sort_values("step")
        assert list(group["metric"][:2]) == ["accuracy", "alpha"]
        for row in group.itertuples():
            values, final = runs[row.metric].to_numpy(float), runs.iloc[-1]
            assert np.isfinite(values).any()
            if not np.isfinite(values[-1]):
                assert np.isnan(row.settled_step)
                continue
            if row.metric == "alpha":  # the final model mean's bootstrap interval, widened to the mean
                assert row.spread == "bootstrap"
                assert row.spread_lo == pytest.approx(min(final["alpha_lo"], final["alpha"]))
                assert row.spread_hi == pytest.approx(max(final["alpha_hi"], final["alpha"]))
            if row.spread == "tolerance":
                assert (row.spread_lo, row.spread_hi) == pytest.approx((values[-1] - 0.05 * abs(values[-1]),
                                                                        values[-1] + 0.05 * abs(values[-1])))
            inside = (values >= row.spread_lo - 1e-12) & (values <= row.spread_hi + 1e-12)
            # the settled step: every checkpoint from it on is inside, the one before it is not
            k = list(runs["step"]).index(row.settled_step)
            assert inside[k:].all() and (k == 0 or not inside[k - 1]), (series, row.metric)
    # accuracy: 80 +- 4 holds only the last checkpoint of run a
    assert table.set_index(["series", "metric"]).loc[("run-a", "accuracy"), "settled_step"] == 20
    for series in ("run-a", "run-b"):
        assert sorted(p.name for p in (finished / "results/plots/trajectory" / series).glob("*.png")) == \
            ["alpha_heatmap.png", "metrics_vs_step.png"]
    # the checkpoints with accuracies are a series like any: regressed on
    regressions = pd.read_csv(finished / "results/zoo/regressions.tsv", sep="\t")
    assert {"run-a", "run-b"} <= set(regressions["series"])


def dry_run_jobs(output):
    """(rule, wildcards) of every job a dry run would run, from its 'rule NAME:' blocks."""
    jobs, rule = [], None
    for line in output.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            if rule is not None:
                jobs.append((rule, ""))
            rule = match.group(1)
        elif rule is not None and line.strip().startswith("wildcards:"):
            jobs.append((rule, line.strip().removeprefix("wildcards:").strip()))
            rule = None
        elif rule is not None and not line.strip():
            jobs.append((rule, ""))
            rule = None
    if rule is not None:
        jobs.append((rule, ""))
    return sorted(jobs)


def test_adding_a_checkpoint_reruns_that_checkpoint_its_run_and_the_zoo_tables(finished, tmp_path):
    assert dry_run_jobs(snakemake(finished, "--cores", "2", "-n").stdout) == []
    workdir = tmp_path / "grown"
    shutil.copytree(finished, workdir, symlinks=True)
    write_checkpoint(workdir / "weights" / "a30.safetensors", seed=77, progress=1.0)
    sheet = workdir / "zoo.tsv"
    sheet.write_text(sheet.read_text() + "a30\trun-a\tfile:weights/a30.safetensors\t81\t30\n")
    jobs = dry_run_jobs(snakemake(workdir, "--cores", "2", "-n").stdout)
    assert jobs == sorted([
        ("fetch", "model=a30"), ("esd", "model=a30"), ("fit", "model=a30"), ("plot_esd", "model=a30"),
        ("trajectory", "series=run-a"), ("trajectories", ""),
        # the zoo-wide tables, and what reads models.tsv (every series' figures)
        ("aggregate", ""), ("discrimination", ""), ("audit", ""),
        ("plot_series", "series=run-a"), ("plot_series", "series=run-b"), ("all", ""),
    ])
