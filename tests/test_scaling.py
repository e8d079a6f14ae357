"""Growing zoos and sharding through the real snakemake CLI, on a zoo of 20 tiny models."""
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import REPO
from test_workflow import snakemake

TABLES = ("results/zoo/models.tsv", "results/zoo/regressions.tsv")
HEADER = "model\tseries\tsource\taccuracy\tshards\n"
# The randomization ESD is not what these tests are about: off, to keep 80 jobs cheap.
CONFIG = "zoo: zoo.tsv\nesd:\n  randomize: false\n"


def write_tiny(path, seed):
    """Four small Linear layers (the smallest one is skipped: fewer than 50 eigenvalues)."""
    rng = np.random.default_rng(seed)
    save_file({
        "a.weight": rng.standard_t(df=3, size=(96, 64)).astype(np.float32),
        "b.weight": rng.standard_normal((64, 96)).astype(np.float32),
        "c.weight": rng.standard_normal((80, 72)).astype(np.float32),
        "d.weight": rng.standard_normal((10, 80)).astype(np.float32),
    }, str(path))


def row(model, series, seed, accuracy, shards=""):
    return f"{model}\t{series}\tfile:weights/w{seed}.safetensors\t{accuracy}\t{shards}\n"


@pytest.fixture(scope="module")
def zoo20(tmp_path_factory):
    """20 models; `big` (shards: 3) and `whole` (unsharded) share their weights file."""
    workdir = tmp_path_factory.mktemp("zoo20")
    (workdir / "weights").mkdir()
    rows = []
    for i in range(19):
        write_tiny(workdir / "weights" / f"w{i}.safetensors", seed=i)
        rows.append(row(f"m{i:02d}", f"s{i % 3}", i, 60.0 + i) if i else row("big", "s0", 0, 60.0, shards=3))
    rows.append(row("whole", "s1", 0, 61.5))
    (workdir / "zoo.tsv").write_text(HEADER + "".join(rows))
    (workdir / "config.yaml").write_text(CONFIG)
    snakemake(workdir, "--cores", "2", *TABLES)
    return workdir


def dry_run_jobs(workdir, *args):
    """The (rule, wildcards) of every job that `snakemake -n` would run, sorted."""
    jobs = []
    for line in snakemake(workdir, "-n", *args, *TABLES).stdout.splitlines():
        started = re.fullmatch(r"(?:local)?rule (\w+):", line)
        if started:
            jobs.append([started.group(1), ""])
        elif jobs and line.startswith("    wildcards: "):
            jobs[-1][1] = line.removeprefix("    wildcards: ")
    return sorted(map(tuple, jobs))


def test_adding_one_model_to_20_reruns_only_its_jobs_and_the_aggregate(zoo20, tmp_path):
    assert dry_run_jobs(zoo20) == []
    grown = tmp_path / "grown"
    shutil.copytree(zoo20, grown, symlinks=True)
    write_tiny(grown / "weights" / "w99.safetensors", seed=99)
    with open(grown / "zoo.tsv", "a") as sheet:
        sheet.write(row("new", "s2", 99, 70.0))
    assert dry_run_jobs(grown) == [
        ("aggregate", ""), ("esd", "model=new"), ("fetch", "model=new"), ("fit", "model=new"),
    ]


def test_a_sharded_model_matches_the_unsharded_one(zoo20):
    big, whole = zoo20 / "results" / "esd" / "big", zoo20 / "results" / "esd" / "whole"
    assert sorted(p.name for p in (big / "shards").iterdir()) == ["1-of-3.json", "2-of-3.json", "3-of-3.json"]
    # three shard jobs, each with its own log, each computing at least one layer
    for k in (1, 2, 3):
        log = (zoo20 / "logs" / "esd" / f"big.{k}-of-3.log").read_text()
        assert re.search(rf"big shard {k} of 3: [1-9] layers", log), log
    assert sorted(p.name for p in big.iterdir() if p.is_file()) == sorted(p.name for p in whole.iterdir())
    for name in ("a.npy", "b.npy", "c.npy", "d.npy"):
        assert (big / name).read_bytes() == (whole / name).read_bytes(), name
    # the same weights give the same rows, whatever the model's name and shards
    layers = [(zoo20 / "results" / "metrics" / m / "layers.tsv").read_text().splitlines() for m in ("big", "whole")]
    assert [line.split("\t", 1)[1] for line in layers[0]] == [line.split("\t", 1)[1] for line in layers[1]]


def test_changing_the_shard_count_recomputes_no_weights_fetch(zoo20, tmp_path):
    copy = tmp_path / "reshard"
    shutil.copytree(zoo20, copy, symlinks=True)
    sheet = copy / "zoo.tsv"
    sheet.write_text(sheet.read_text().replace("60.0\t3\n", "60.0\t2\n"))
    jobs = dry_run_jobs(copy)
    assert ("esd_shard", "model=big, shard=1-of-2") in jobs and ("esd", "model=big") in jobs
    assert not [job for job in jobs if job[0] == "fetch" or "model=big" not in job[1] and job[0] != "aggregate"]


def test_larger_weights_fetch_and_esd_first_and_every_esd_before_any_fetch(tmp_path):
    """Longest first: a model's fetch and esd priorities grow with its weights file, and every
    esd job's is above every fetch job's."""
    (tmp_path / "weights").mkdir()
    sizes = {"small": (10, 80), "large": (200, 300), "medium": (100, 120)}
    rng = np.random.default_rng(0)
    for name, shape in sizes.items():
        save_file({"a.weight": rng.standard_normal(shape).astype(np.float32)},
                  str(tmp_path / "weights" / f"{name}.safetensors"))
    (tmp_path / "zoo.tsv").write_text(HEADER + "".join(
        f"{name}\ts\tfile:weights/{name}.safetensors\t\t\n" for name in sizes))
    (tmp_path / "config.yaml").write_text(CONFIG)
    priority = {}
    job = None
    for line in snakemake(tmp_path, "-n", *TABLES).stdout.splitlines():
        started = re.fullmatch(r"(?:local)?rule (\w+):", line)
        if started:
            job = [started.group(1), ""]
        elif job and line.startswith("    wildcards: model="):
            job[1] = line.removeprefix("    wildcards: model=")
        elif job and line.startswith("    priority: "):
            priority[tuple(job)] = float(line.removeprefix("    priority: "))
    for rule in ("fetch", "esd"):
        assert priority[(rule, "large")] > priority[(rule, "medium")] > priority[(rule, "small")], priority
    assert min(priority[("esd", name)] for name in sizes) > max(priority[("fetch", name)] for name in sizes)


def test_parsing_the_workflow_imports_no_torch(zoo20):
    # Every job and every no-op rerun parses the Snakefile: it must stay cheap.
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "snakemake", "--snakefile",
                             str(REPO / "Snakefile"), "--directory", str(zoo20), "-n", *TABLES],
                            capture_output=True, text=True, timeout=300, check=True)
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "snakemake" in imported and "zooscope.config" in imported
    assert not {name for name in imported if name.split(".")[0] in ("torch", "torchvision", "transformers", "scipy")}
