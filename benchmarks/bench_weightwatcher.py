"""Benchmark zooscope against WeightWatcher on VGG16, ResNet-50 and GPT-2 small at random init.

Not run by pytest. Needs the optional package (benchmarks only):

    pip install weightwatcher        # or: pip install -e .[bench]
    python benchmarks/bench_weightwatcher.py [--cores 2] [--models vgg16,resnet50,gpt2] [--workdir DIR]
                                             [--in-process] [--device cuda]

In one run, on the same models (seeded random initialisation, written to safetensors files in a
temporary folder, or DIR, kept):

* zooscope end to end: `snakemake --cores N` on a zoo sheet of `file:` rows, from the weight files
  to every layer's alpha and the zoo tables (fetch, esd, fit, aggregate), once from nothing per
  configuration (CONFIGS; `--configs` picks some): `same-work` computes what `analyze()` computes
  (point estimates of the fit: `fit.bootstrap: 0`, `fit.gof: 0`, `fit.alternatives: false`; no
  randomization check, which is off by default), `defaults` is zooscope's defaults (the fit's
  uncertainty statistics too), `randomize` the defaults with the randomization check
  (`esd.randomize: true`, as the demo runs).
* WeightWatcher: `weightwatcher.WeightWatcher(model=m).analyze()` (its defaults) over the same
  models, in one Python process, with BLAS/torch threads limited to N. Each model is built again
  for it (same seed; checked equal to the weights file): no model is held in memory while
  zooscope is timed, as no user's workstation would hold it.
* per model, in process: zooscope's library call (esd and fit of the fetched model:
  `compute_model_esd` then `fit_layers`, the work of its esd and fit jobs without the job start-up)
  against `analyze()` of that model.

It prints the total times and both ratios (targets: the same work at least 5 times faster, the
defaults at least 3 times), the per-model
ratios, and the alphas of the dense layers (Linear, Embedding, GPT-2's Conv1D; both tools analyse
them as one matrix with the same power-law fit), compared layer by layer. Conv2d layers are not
compared: zooscope fits each kernel slice (config `conv2d: slices`), WeightWatcher pools the slices.
`--device cuda` computes zooscope's eigenvalues on the GPU (config `esd.device: cuda`), end to end
and in process, and times the eigen-work floor there; WeightWatcher runs its SVDs on the GPU
whenever torch sees one (its own choice, not a setting), so on a GPU machine only `--device cuda`
compares like with like (the header line says where each tool ran). `--in-process` skips the
end-to-end run (no Snakemake needed: the models are fetched by the library call that the fetch job
makes) and prints only the per-model figures.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
# zooscope's configurations timed end to end: (their settings in config.yaml beside "zoo:", the
# target of analyze()'s time / zooscope's, issue 16's; None: no target)
CONFIGS = {
    "same-work": ({"fit": {"bootstrap": 0, "gof": 0, "alternatives": False}}, 5.0),
    "defaults": ({}, 3.0),
    "randomize": ({"esd": {"randomize": True}}, None),
}
DEVICES = ("cpu", "cuda")
TABLES = ("results/zoo/models.tsv", "results/zoo/regressions.tsv")
JOB_LOG = re.compile(r"took ([0-9.]+) s; process CPU ([0-9.]+) s user, ([0-9.]+) s system; peak RSS ([0-9.]+) GiB")


def config_yaml(config: str, device: str) -> str:
    """The run's config.yaml: the zoo sheet zoo.tsv, configuration ``config``'s settings, and
    ``esd.device: device`` (config ``esd.device``; cpu, the default, is left out)."""
    import yaml

    settings = {"zoo": "zoo.tsv", **copy.deepcopy(CONFIGS[config][0])}
    if device != "cpu":
        settings.setdefault("esd", {})["device"] = device
    return yaml.safe_dump(settings, sort_keys=False)


def warm_up(device: str) -> None:
    """On a GPU: make torch's CUDA context and its cuSOLVER/cuBLAS handles before anything is timed
    (both tools run on them in this process; analyze() runs its SVDs on the GPU where torch sees one)."""
    if device == "cuda":
        w = torch.randn(64, 32, device="cuda", dtype=torch.float64)
        torch.linalg.eigvalsh(w.T @ w)
        torch.linalg.svdvals(w.float())
        torch.cuda.synchronize()


def gpu_label(device: str) -> str:
    """" (the GPU's name)" for ``device`` cuda, "" for cpu; exits where torch sees no CUDA GPU."""
    if device != "cuda":
        return ""
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here")
    return f" ({torch.cuda.get_device_name()})"


def svd_route() -> str:
    """Where WeightWatcher 0.7.7 runs its SVDs: torch on the GPU when torch sees CUDA, else scipy."""
    return "torch on the GPU" if torch.cuda.is_available() else "scipy on the CPU"


def blas() -> str:
    """Which BLAS kernels numpy and scipy run: a machine that forces OpenBLAS's core type (some set
    OPENBLAS_CORETYPE for old OpenBLAS builds) runs older, slower kernels for both tools."""
    from threadpoolctl import threadpool_info

    import scipy.linalg  # noqa: F401  (its own OpenBLAS, which WeightWatcher's SVD runs on)

    kernels = sorted({f"{info['internal_api']} {info['version']} {info.get('architecture')}"
                      for info in threadpool_info() if info["user_api"] == "blas"})
    forced = {name: os.environ[name] for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if name in os.environ}
    return f"BLAS {'; '.join(kernels)} ({', '.join(f'{k}={v}' for k, v in forced.items()) or 'core type detected'})"


def load() -> str:
    """The 1-minute load average: on a shared machine, how much else ran during a phase."""
    return f"load {os.getloadavg()[0]:.1f}"


def build(name: str) -> torch.nn.Module:
    """The model at a seeded random initialisation."""
    torch.manual_seed(0)
    if name == "vgg16":
        import torchvision

        return torchvision.models.vgg16(weights=None)
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50(weights=None)
    if name == "gpt2":
        from transformers import GPT2Config, GPT2Model

        return GPT2Model(GPT2Config())  # GPT-2 small: 12 layers, 768 wide, 124M parameters
    raise SystemExit(f"unknown model {name!r}; valid: vgg16, resnet50, gpt2")


def check_same_weights(model: torch.nn.Module, path: Path) -> None:
    """The rebuilt model has exactly the weights zooscope analysed (the seeded build is repeatable)."""
    from safetensors import safe_open

    state = model.state_dict()
    with safe_open(str(path), framework="pt") as stored:
        different = [key for key in stored.keys() if not torch.equal(stored.get_tensor(key), state[key])]
    if different:
        raise SystemExit(f"{path.name}: the rebuilt model differs from the analysed weights in {different[:3]}")


def write_weights(model: torch.nn.Module, path: Path) -> None:
    """The floating-point tensors of the state dict, each its own copy (tied ones too)."""
    state = {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()
             if value.is_floating_point()}
    save_file(state, str(path))


@contextlib.contextmanager
def quiet():
    """Swallow stdout, stderr and warnings (weightwatcher prints and logs a lot)."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def clear_run(workdir: Path) -> None:
    """Remove a previous run's outputs from ``workdir`` (a kept --workdir), so that the next run
    starts from nothing: no cached ESD, no fetched model."""
    for stale in ("resources", "results", "logs", ".snakemake"):
        shutil.rmtree(workdir / stale, ignore_errors=True)


def compile_zooscope() -> None:
    """Byte-compile zooscope's modules, as an install has them (pip compiles what it installs; an
    editable install's are written on first import). A machine that sets PYTHONDONTWRITEBYTECODE,
    as the development one does, never writes them, and every job would compile its imports
    again: 0.13 s of the same-work run (2026-12-01). WeightWatcher's are compiled (site-packages)."""
    import compileall

    import zooscope

    compileall.compile_dir(Path(zooscope.__file__).parent, quiet=1)


def run_zooscope(workdir: Path, cores: int) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                             "--directory", str(workdir), "--cores", str(cores), *TABLES],
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"snakemake failed:\n{result.stdout}\n{result.stderr}")
    return seconds


def job_logs(workdir: Path) -> dict[str, tuple[float, float, float]]:
    """{log name (stage/job.log): (seconds, process CPU seconds, peak RSS GiB)} from each job log's
    last line ("took W s; process CPU U s user, S s system; peak RSS R GiB", zooscope.jobs)."""
    jobs = {}
    for log in sorted((workdir / "logs").rglob("*.log")):
        found = JOB_LOG.findall(log.read_text(errors="replace"))
        if found:
            wall, user, system, rss = map(float, found[-1])
            jobs[str(log.relative_to(workdir / "logs"))] = (wall, user + system, rss)
    return jobs


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", re.MULTILINE)


def timeline(workdir: Path, started: float, seconds: float) -> str:
    """Where a run's wall time went: each job's first and last log line in seconds from the run's
    start (``started``, epoch seconds), in start order, with Snakemake's start-up before the first
    and its end after the last (what the job logs do not cover is start-up, hops and waits)."""
    from datetime import datetime

    spans = []
    for log in (workdir / "logs").rglob("*.log"):
        stamps = LOG_TIME.findall(log.read_text(errors="replace"))
        if stamps:
            first, last = (datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() - started
                           for stamp in (stamps[0], stamps[-1]))
            spans.append((first, last, str(log.relative_to(workdir / "logs")).removesuffix(".log")))
    if not spans:
        return "timeline: no job logs"
    spans.sort()
    jobs = ", ".join(f"{name} {first:.2f}-{last:.2f}" for first, last, name in spans)
    end = max(last for _, last, _ in spans)
    return (f"timeline (s from the start): Snakemake start-up {spans[0][0]:.2f}; {jobs}; "
            f"Snakemake's end {seconds - end:.2f}")


def stage_times(workdir: Path) -> str:
    """Wall and CPU seconds inside the jobs, summed per stage (:func:`job_logs`)."""
    stages: dict[str, list[float]] = {}
    for name, (wall, cpu, _) in job_logs(workdir).items():
        total = stages.setdefault(name.split("/")[0], [0.0, 0.0])
        total[0] += wall
        total[1] += cpu
    return "inside the jobs (wall / CPU s): " + ", ".join(f"{stage} {wall:.1f} / {cpu:.1f}"
                                                          for stage, (wall, cpu) in stages.items())


def eigen_floor(layers: list[dict], threads: int, gram: str = "float64",
                device: str = "cpu") -> tuple[float, list[tuple[int, int, int, float]]]:
    """(seconds, [(N, M, count, seconds of one)]): Gram (products in ``gram``: esd.gram) + eigenvalues
    (the esd stage's eigensolver: spectrum.eigenvalues) of each distinct shape, times its count.
    ``device`` cuda: the esd stage's GPU route (float64 throughout; ``gram`` does not apply), the
    matrix's transfer to the GPU and the eigenvalues' back included, as in the esd job."""
    from zooscope.resources import layer_matrices
    from zooscope.spectra import spectrum

    counts: Counter = Counter()
    for layer in layers:
        count, n, m = layer_matrices(layer["shape"])
        counts[(n, m)] += count
    torch_device = spectrum.resolve_device(device)

    def best(matrix, limit: int) -> float:  # best of 3 (1 for a matrix that takes over a second)
        times = []
        with threadpool_limits(limit):
            while len(times) < 3 and sum(times) < 1.0:
                start = time.perf_counter()
                spectrum.eigenvalues(matrix, gram=gram, device=torch_device)
                times.append(time.perf_counter() - start)
        return min(times)

    warm_up(device)
    rng = np.random.default_rng(0)
    rows, total = [], 0.0
    for (n, m), count in sorted(counts.items(), key=lambda item: -item[0][0] * item[0][1]):
        matrix = rng.standard_normal((n, m), dtype=np.float32)
        # the better of all threads on one matrix and one thread per matrix, ``threads`` at once
        # (on a GPU: one matrix at a time, as the esd job runs them)
        seconds = best(matrix, threads) if torch_device else min(best(matrix, threads), best(matrix, 1) / threads)
        rows.append((n, m, count, seconds))
        total += seconds * count
    return total, rows


def zooscope_library(workdir: Path, model: str, threads: int, device: str = "cpu"):
    """zooscope's esd and fit of a fetched model, in process: (seconds, layers table)."""
    from zooscope.config import EsdSettings, FitSettings
    from zooscope.spectra.esd import compute_model_esd, load_layer_eigenvalues
    from zooscope.analysis.metrics import fit_layers

    fetched = workdir / "resources" / "models" / model
    with tempfile.TemporaryDirectory(prefix=f"zooscope-lib-{model}-") as out:
        start = time.perf_counter()
        index = compute_model_esd(fetched / "model.safetensors", fetched / "layers.json", out,
                                  EsdSettings(randomize=False), device=device, threads=threads)
        # point estimates, as WeightWatcher's (no bootstrap or goodness of fit)
        layers = fit_layers(index, partial(load_layer_eigenvalues, out), FitSettings().without_uncertainty())
        return time.perf_counter() - start, layers


def run_weightwatcher(model: torch.nn.Module):
    with quiet():
        import weightwatcher  # prints about torch and CUDA on import

        start = time.perf_counter()
        details = weightwatcher.WeightWatcher(model=model).analyze()
        return time.perf_counter() - start, details


def compare_dense_alphas(ours, theirs) -> dict:
    """Ours (Linear/Embedding rows that were fitted) against WeightWatcher's rows of the same layer."""
    ours = ours[(ours["type"].isin(["Linear", "Embedding"])) & (ours["status"] == "ok")].set_index("layer")
    theirs = theirs[theirs["layer_type"].astype(str).str.lower().str.contains("dense|embedding|conv1d")]
    theirs = theirs.set_index("longname")
    common = [name for name in ours.index if name in theirs.index]
    ours_alpha = ours.loc[common, "alpha"].to_numpy(float)
    theirs_alpha = theirs.loc[common, "alpha"].to_numpy(float)
    relative = np.abs(ours_alpha - theirs_alpha) / np.abs(theirs_alpha)
    worst = int(np.argmax(relative)) if common else None
    return {
        "compared": len(common),
        "ours_only": len(ours) - len(common),
        "same_1e-6": int(np.sum(relative <= 1e-6)),
        "worst": (common[worst], ours_alpha[worst], theirs_alpha[worst], relative[worst]) if common else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--models", default="vgg16,resnet50,gpt2")
    parser.add_argument("--workdir", type=Path, help="build the zoo here and keep it (default: a temporary folder)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"zooscope configurations to time end to end, of {', '.join(CONFIGS)} (default: all)")
    parser.add_argument("--in-process", action="store_true",
                        help="skip the end-to-end Snakemake run: per-model figures only")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="zooscope's config esd.device, end to end and in process (default: %(default)s)")
    args = parser.parse_args()
    gpu = gpu_label(args.device)
    names = args.models.split(",")
    torch.set_num_threads(args.cores)

    with tempfile.TemporaryDirectory(prefix="zooscope-ww-") as tmp:
        workdir = args.workdir or Path(tmp)
        (workdir / "weights").mkdir(parents=True, exist_ok=True)
        params, rows = {}, ["model\tseries\tsource\taccuracy\n"]
        for name in names:
            model = build(name)
            params[name] = sum(p.numel() for p in model.parameters()) / 1e6
            write_weights(model, workdir / "weights" / f"{name}.safetensors")
            rows.append(f"{name}\tbench\tfile:weights/{name}.safetensors\t\n")
        # No model stays in this process while zooscope is timed: each is built again (same seed)
        # for its analyze(). Held here, the 1.1 GB of models made the kernel hand zooscope's jobs
        # never-touched memory, which this VM backs lazily (fetch system time 0.6 -> 4-5 s).
        del model
        gc.collect()
        (workdir / "zoo.tsv").write_text("".join(rows))
        # The weights are on disk before anything is timed: without this, the first timed phase
        # (zooscope's) would also pay the kernel's write-back of the 1.1 GB just written.
        os.sync()
        print(f"models: {', '.join(f'{n} ({params[n]:.1f}M parameters)' for n in names)}; {args.cores} cores; "
              f"torch {torch.__version__}; {blas()}; zooscope's esd.device: {args.device}{gpu}; "
              f"WeightWatcher's SVDs: {svd_route()}")

        if args.in_process:
            from zooscope.sources.fetch import fetch_model

            for name in names:
                fetch_model({"model": name, "series": "bench", "source": f"file:weights/{name}.safetensors",
                             "accuracy": None}, workdir / "resources" / "models" / name, sheet_dir=workdir)
        else:
            ours_totals = {}
            compile_zooscope()  # before the timed runs
            for config in args.configs.split(","):
                if config not in CONFIGS:
                    raise SystemExit(f"unknown configuration {config!r}; valid: {', '.join(CONFIGS)}")
                clear_run(workdir)
                (workdir / "config.yaml").write_text(config_yaml(config, args.device))
                started = time.time()
                ours_totals[config] = run_zooscope(workdir, args.cores)
                print(f"zooscope, snakemake --cores {args.cores} (weights files -> zoo tables), {config}: "
                      f"{ours_totals[config]:.1f} s ({load()}); {stage_times(workdir)}", flush=True)
                print(f"  {timeline(workdir, started, ours_totals[config])}", flush=True)

        print("\nper model, in process (zooscope esd+fit library call vs analyze()):")
        print(f"{'model':<10}{'zooscope s':>12}{'analyze s':>11}{'ratio':>8}   dense alphas (ours vs WW)", flush=True)
        ww = {}
        warm_up("cuda" if torch.cuda.is_available() else "cpu")  # analyze()'s GPU, and zooscope's
        with threadpool_limits(limits=args.cores):
            for name in names:
                model = build(name)
                check_same_weights(model, workdir / "weights" / f"{name}.safetensors")
                ww[name] = run_weightwatcher(model)
                del model
                seconds, ours_layers = zooscope_library(workdir, name, args.cores, device=args.device)
                alphas = compare_dense_alphas(ours_layers, ww[name][1])
                worst = alphas["worst"]
                detail = (f"{alphas['same_1e-6']}/{alphas['compared']} within 1e-6 relative"
                          + (f"; worst {worst[0]}: {worst[1]:.6f} vs {worst[2]:.6f} ({worst[3]:.1e})" if worst else ""))
                print(f"{name:<10}{seconds:>12.2f}{ww[name][0]:>11.2f}{ww[name][0] / seconds:>7.1f}x   {detail} "
                      f"({load()})", flush=True)
        ww_total = sum(seconds for seconds, _ in ww.values())
        print(f"\nWeightWatcher analyze(), one process, {len(names)} models: {ww_total:.1f} s")
        if not args.in_process:
            for config, ours_total in ours_totals.items():
                ratio, target = ww_total / ours_total, CONFIGS[config][1]
                verdict = f" (target >= {target:.0f}x: {'met' if ratio >= target else 'MISSED'})" if target else ""
                print(f"total, {config}: zooscope end to end {ratio:.2f}x faster than analyze(){verdict}", flush=True)
            # the eigen-work alone, for what the end-to-end times can reach (issue 16: near the floor)
            layers = [layer for name in names for layer in json.loads(
                (workdir / "resources" / "models" / name / "layers.json").read_text())["layers"]]
            grams = ("float64",) if args.device == "cuda" else ("float64", "float32")
            floors = {gram: eigen_floor(layers, args.cores, gram=gram, device=args.device)[0] for gram in grams}
            floor = floors[grams[-1]]  # the products the esd job runs (esd.gram's default on the CPU)
            print(f"eigen-work floor of the {len(names)} models (Gram + eigensolver of each matrix shape alone, "
                  f"{args.cores} threads, device {args.device}; {load()}): float64 products {floors['float64']:.1f} s "
                  f"(analyze() = {ww_total / floors['float64']:.1f}x it)"
                  + (f", esd.gram's float32 products {floors['float32']:.1f} s" if "float32" in floors else "")
                  + "; zooscope end to end = "
                  + ", ".join(f"{config} {total / floor:.2f}x" for config, total in ours_totals.items())
                  + f" the {grams[-1]} floor", flush=True)


if __name__ == "__main__":
    main()
