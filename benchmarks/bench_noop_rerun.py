"""Benchmark: a no-op rerun (`snakemake -n`, nothing to do) of a 100-model zoo.

Not run by pytest.

    python benchmarks/bench_noop_rerun.py [--models 100] [--repeats 3] [--workdir DIR]

Builds a zoo of small `file:` models (two Linear layers each) in a temporary folder (or DIR,
kept), runs the workflow once for the zoo tables (`results/zoo/models.tsv` and
`regressions.tsv`: fetch, esd and fit of every model, then the aggregate), then times
`snakemake -n` on the same targets, which must find nothing to do, and as its peer the start-up of
`python -c 'import snakemake'` in the same run. Prints the best of the repeats in seconds.
Target: the no-op rerun under 5 s.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("results/zoo/models.tsv", "results/zoo/regressions.tsv")
TARGET_SECONDS = 5.0


def make_zoo(workdir: Path, models: int) -> None:
    (workdir / "weights").mkdir(parents=True, exist_ok=True)
    rows = ["model\tseries\tsource\taccuracy\n"]
    for i in range(models):
        rng = np.random.default_rng(i)
        save_file({
            "fc1.weight": rng.standard_t(df=3, size=(96, 64)).astype(np.float32),
            "fc2.weight": rng.standard_normal((64, 96)).astype(np.float32),
        }, str(workdir / "weights" / f"m{i}.safetensors"))
        rows.append(f"m{i}\ts{i % 4}\tfile:weights/m{i}.safetensors\t{60 + (i * 7) % 30}\n")
    (workdir / "zoo.tsv").write_text("".join(rows))
    (workdir / "config.yaml").write_text("zoo: zoo.tsv\n")


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(workdir), *args, *TARGETS],
                          capture_output=True, text=True, check=True)


def best_seconds(command, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        command()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="build the zoo here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zooscope-noop-") as tmp:
        workdir = args.workdir or Path(tmp)
        make_zoo(workdir, args.models)
        start = time.perf_counter()
        snakemake(workdir, "--cores", "all")
        print(f"first run, {args.models} models: {time.perf_counter() - start:.1f} s")

        def noop():
            out = snakemake(workdir, "-n")
            if "Nothing to be done" not in out.stdout + out.stderr:
                raise SystemExit(f"the rerun is not a no-op:\n{out.stdout}{out.stderr}")

        rerun = best_seconds(noop, args.repeats)
        peer = best_seconds(lambda: subprocess.run([sys.executable, "-c", "import snakemake"], check=True),
                            args.repeats)
    print(f"no-op rerun (snakemake -n): {rerun:.2f} s  (target < {TARGET_SECONDS:.0f} s: "
          f"{'met' if rerun < TARGET_SECONDS else 'MISSED'})")
    print(f"peer, python -c 'import snakemake': {peer:.2f} s; rerun minus import: {rerun - peer:.2f} s")


if __name__ == "__main__":
    main()
