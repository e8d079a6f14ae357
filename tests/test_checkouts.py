"""Two checkouts, one environment: each workflow runs its own zooscope (the Snakefile puts its
checkout's src/ first), and docs/sources.md's recipe for a new source kind, followed once: one
module and one registry line in the second checkout, used by a real workflow run there."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import REPO
from zooscope.sources.registry import KINDS

CHECKOUT = ("Snakefile", "rules", "scripts", "schemas", "src", "report", "envs")

# The new kind, as docs/sources.md says to write one: a module declaring KIND with its fetch.
GAUSS_MODULE = '''"""``gauss:NxM``: one Linear layer of N x M standard normal weights, seeded by the row's ``seed``."""
from __future__ import annotations

from zooscope.sources.base import Fetched, SourceKind


def fetch(row, threads):
    import numpy as np
    import torch

    from zooscope.layers import layers_from_state_dict

    n, m = (int(side) for side in row.source.argument.split("x"))
    weight = np.random.default_rng(row.options.get("seed", 0)).standard_normal((n, m)).astype(np.float32)
    return Fetched(layers=layers_from_state_dict({"fc.weight": torch.from_numpy(weight)}), num_params=n * m,
                   accuracy=row.accuracy, accuracy_source=None if row.accuracy is None else "zoo sheet")


KIND = SourceKind(name="gauss", syntax="gauss:NxM", example="gauss:120x80", argument=r"[1-9][0-9]*x[1-9][0-9]*",
                  fetch=fetch, options={"seed": int})
'''
SHEET = (
    "model\tseries\tsource\taccuracy\tseed\n"
    "g1\tgauss\tgauss:120x80\t70\t1\n"
    "g2\tgauss\tgauss:100x60\t75\t2\n"
    "r\tgauss\trandom:mlp\t\t3\n"
)


def copy_checkout(target: Path) -> Path:
    target.mkdir(parents=True)
    for name in CHECKOUT:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target / name)
    return target


def add_gauss_kind(checkout: Path) -> None:
    """The recipe: the module, and its line in the registry."""
    (checkout / "src" / "zooscope" / "sources" / "gauss.py").write_text(GAUSS_MODULE)
    registry = checkout / "src" / "zooscope" / "sources" / "registry.py"
    text = registry.read_text()
    line = '    "zooscope.sources.hf",\n'
    assert text.count(line) == 1
    registry.write_text(text.replace(line, line + '    "zooscope.sources.gauss",\n'))


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkouts")
    first, second = copy_checkout(root / "first"), copy_checkout(root / "second")
    add_gauss_kind(second)
    return first, second


def run_snakemake(checkout: Path, workdir: Path, *targets, installed: Path):
    """The snakemake CLI with ``installed``'s zooscope first on PYTHONPATH (the environment's)."""
    env = {**os.environ, "PYTHONPATH": str(installed / "src")}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(checkout / "Snakefile"), "--directory", str(workdir),
         "--cores", "2", *targets],
        capture_output=True, text=True, timeout=600, env=env,
    )


def test_each_checkout_runs_its_own_code_and_the_new_kind_works(checkouts, tmp_path):
    first, second = checkouts
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "zoo.tsv").write_text(SHEET)
    (workdir / "config.yaml").write_text("zoo: zoo.tsv\nesd:\n  randomize: false\nfit:\n  min_evals: 20\n")
    targets = [f"results/metrics/{model}/summary.json" for model in ("g1", "g2", "r")]

    # the first checkout (also the "installed" one) has no gauss kind: the sheet is refused at parse time
    refused = run_snakemake(first, workdir, *targets, installed=first)
    assert refused.returncode != 0
    assert "row 2 (model 'g1'): unknown source 'gauss:" in refused.stdout + refused.stderr
    assert not (workdir / "resources").exists()

    # the second, with the first's zooscope installed: the Snakefile and every job use the second's
    result = run_snakemake(second, workdir, *targets, installed=first)
    assert result.returncode == 0, result.stdout + result.stderr
    for model in ("g1", "g2"):
        for log in (f"logs/fetch/{model}.log", f"logs/esd/{model}.log", f"logs/fit/{model}.log"):
            ran = re.search(r"zooscope from (\S+)", (workdir / log).read_text()).group(1)
            assert Path(ran) == (second / "src" / "zooscope").resolve(), log
    # the kind's weights, derived here independently, and their eigenvalues against numpy's SVD
    for model, (n, m), seed in (("g1", (120, 80), 1), ("g2", (100, 60), 2)):
        weight = np.random.default_rng(seed).standard_normal((n, m)).astype(np.float32)
        stored = load_file(workdir / "resources" / "models" / model / "model.safetensors")
        np.testing.assert_array_equal(stored["fc.weight"], weight)
        meta = json.loads((workdir / "resources" / "models" / model / "meta.json").read_text())
        assert (meta["source"], meta["options"], meta["num_params"]) == (f"gauss:{n}x{m}", {"seed": seed}, n * m)
        eigenvalues = np.load(workdir / "results" / "esd" / model / "fc.npy")[0]
        expected = np.sort(np.linalg.svd(weight.astype(np.float64), compute_uv=False) ** 2)
        # the float32 Gram route (esd.gram's default): within 1e-6 of lambda_max (tests/test_spectrum.py)
        np.testing.assert_allclose(eigenvalues, expected, rtol=1e-6, atol=1e-6 * expected.max())
        summary = json.loads((workdir / "results" / "metrics" / model / "summary.json").read_text())
        assert summary["num_fitted"] == 1


def test_a_zooscope_imported_from_another_checkout_stops_the_workflow(checkouts, tmp_path):
    """In one process that already imported the first checkout's zooscope, the second's Snakefile
    cannot switch packages: it stops with a message naming both, before any job."""
    first, second = checkouts
    (tmp_path / "zoo.tsv").write_text(SHEET)
    (tmp_path / "config.yaml").write_text("zoo: zoo.tsv\n")
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(first / 'src')!r})\n"
        "import zooscope\n"
        "from snakemake.cli import main\n"
        f"sys.argv = ['snakemake', '--snakefile', {str(second / 'Snakefile')!r}, '--directory', {str(tmp_path)!r},"
        " '--cores', '1', '-n']\n"
        "main()\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"runs the zooscope of its checkout, {(second / 'src' / 'zooscope').resolve()}" in output
    assert f"already imported another one: {(first / 'src' / 'zooscope').resolve()}" in output


def test_the_sources_page_documents_every_kind_and_the_recipe():
    page = (REPO / "docs" / "sources.md").read_text()
    for kind in KINDS.values():
        assert f"`{kind.syntax}`" in page, kind.name
    assert "KIND_MODULES" in page and "SourceKind" in page
