"""The workflow on a real single-node SLURM cluster (.ci/slurm-up), through profiles/slurm.

Needs root (the daemons run as SlurmUser=root) and slurm-wlm/munge, which .ci/slurm-up installs
with apt-get when missing. Skipped where that is impossible, or with ZOOSCOPE_SLURM_TEST=0.
"""
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import REPO
from test_workflow import make_zoo, snakemake

TABLES = ("results/zoo/models.tsv", "results/zoo/regressions.tsv")
STAGES = ("fetch", "esd", "fit")


def skip_reason():
    if os.environ.get("ZOOSCOPE_SLURM_TEST") == "0":
        return "ZOOSCOPE_SLURM_TEST=0"
    if os.geteuid() != 0:
        return "a SLURM test cluster needs root (SlurmUser=root); set ZOOSCOPE_SLURM_TEST=0 to silence"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "slurm-wlm is not installed and there is no apt-get to install it"
    return None


@pytest.fixture(scope="module")
def slurm_conf(tmp_path_factory):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    try:
        subprocess.run([str(REPO / ".ci" / "slurm-up"), str(state)], check=True, timeout=600)
        yield state / "slurm.conf"
    finally:
        subprocess.run([str(REPO / ".ci" / "slurm-down"), str(state)], timeout=120)


def shard_model(workdir, model, shards):
    """Give the zoo sheet a `shards` column: `shards` for `model`, empty for the others."""
    sheet = workdir / "zoo.tsv"
    header, *rows = sheet.read_text().splitlines()
    rows = [f"{row}\t{shards if row.split(chr(9))[0] == model else ''}" for row in rows]
    sheet.write_text("\n".join([f"{header}\tshards", *rows]) + "\n")


def test_workflow_on_slurm_matches_a_local_run(slurm_conf, tmp_path, monkeypatch):
    local, cluster = make_zoo(tmp_path / "local"), make_zoo(tmp_path / "cluster")
    # On the cluster file2's esd is split into two jobs: the tables must not change.
    shard_model(cluster, "file2", 2)
    snakemake(local, "--cores", "2", *TABLES)
    monkeypatch.setenv("SLURM_CONF", str(slurm_conf))
    ctld_log = slurm_conf.parent / "log" / "slurmctld.log"
    submitted_before = ctld_log.read_text().count("_slurm_rpc_submit_batch_job")
    start = time.monotonic()
    # No accounting database here: job states come from squeue (finished jobs stay listed for
    # MinJobAge=600 s), and there is no account to guess.
    snakemake(cluster, "--profile", str(REPO / "profiles" / "slurm"), "--slurm-status-command", "squeue",
              "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "2",
              "--slurm-keep-successful-logs", *TABLES)
    print(f"SLURM run: {time.monotonic() - start:.0f} s")

    models = sorted(p.name for p in (local / "resources" / "models").iterdir())
    # every job went through slurmctld, each with its own job log from the executor
    submitted = ctld_log.read_text().count("_slurm_rpc_submit_batch_job") - submitted_before
    assert submitted == len(STAGES) * len(models) + 1 + 2  # + aggregate + file2's two esd shards
    for stage in STAGES:
        for model in models:
            logs = list((cluster / ".snakemake" / "slurm_logs" / f"rule_{stage}" / model).glob("*.log"))
            assert len(logs) == 1 and re.fullmatch(r"\d+\.log", logs[0].name), (stage, model, logs)
    shard_logs = sorted(log.parent.name
                        for log in (cluster / ".snakemake" / "slurm_logs" / "rule_esd_shard").glob("*/*.log"))
    assert shard_logs == ["file2_1-of-2", "file2_2-of-2"], shard_logs
    # the esd job asked for the memory estimated from the model's tensors, not the default
    esd_log = next((cluster / ".snakemake" / "slurm_logs" / "rule_esd" / "file0").glob("*.log")).read_text()
    assert re.search(r"mem_mb=1025\b", esd_log), esd_log

    tables = [*TABLES, *(f"results/metrics/{model}/layers.tsv" for model in models), "results/esd/file2/index.json"]
    for table in tables:
        assert (cluster / table).read_bytes() == (local / table).read_bytes(), table
