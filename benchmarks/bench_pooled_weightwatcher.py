"""zooscope's `esd.conv2d: pooled` against WeightWatcher's `analyze()` on a random-init ResNet-18.

Not run by pytest. Needs the optional package (benchmarks only):

    pip install weightwatcher        # or: pip install -e .[bench]
    python benchmarks/bench_pooled_weightwatcher.py [--cores 2] [--seed 0]

WeightWatcher's default view of a Conv2D layer (`pool=True`) pools the eigenvalues of all kh*kw
kernel slices into one ESD and fits it once. zooscope's `esd.conv2d: pooled` does the same. The script
builds torchvision's ResNet-18 at a seeded random initialisation, writes it to a safetensors file,
fetches it as a `file:` row, computes the pooled ESDs and fits (`compute_model_esd` then
`fit_layers`, in process) and runs `WeightWatcher(model=m).analyze()` (its defaults) on the same
module. Per Conv2d layer it prints both alphas, the number of eigenvalues each pooled, and the
ratio of the largest eigenvalues (the two tools scale the slices differently: docs/formats.md);
then the worst relative alpha difference over the conv layers (exit 1 above 1e-6) and the two
times, with their ratio (measured in the same run; on a loaded machine only the ratio means much).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file
from threadpoolctl import threadpool_limits

from bench_weightwatcher import run_weightwatcher  # this folder is on sys.path when run as a script

SAME_ALPHA = 1e-6


def build(seed: int) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None)


def run_zooscope(workdir: Path, model: torch.nn.Module, threads: int):
    """(seconds of esd + fit, layers table) of the model fetched as a file: row, conv2d: pooled."""
    from zooscope.analysis.metrics import fit_layers
    from zooscope.config import EsdSettings, FitSettings
    from zooscope.sources.fetch import fetch_model
    from zooscope.spectra.esd import compute_model_esd, load_layer_eigenvalues

    weights = workdir / "resnet18.safetensors"
    save_file({key: value.detach().clone().contiguous() for key, value in model.state_dict().items()
               if value.is_floating_point()}, str(weights))
    fetched = workdir / "resources" / "resnet18"
    fetch_model({"model": "resnet18", "series": "bench", "source": f"file:{weights}", "accuracy": None},
                fetched, sheet_dir=workdir)
    start = time.perf_counter()
    index = compute_model_esd(fetched / "model.safetensors", fetched / "layers.json", workdir / "esd",
                              EsdSettings(conv2d="pooled", randomize=False), threads=threads)
    # point estimates, as WeightWatcher's (no bootstrap or goodness of fit)
    layers = fit_layers(index, partial(load_layer_eigenvalues, workdir / "esd"), FitSettings().without_uncertainty())
    return time.perf_counter() - start, layers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.cores)
    model = build(args.seed)
    with tempfile.TemporaryDirectory(prefix="zooscope-pooled-") as tmp, threadpool_limits(limits=args.cores):
        ours_seconds, ours = run_zooscope(Path(tmp), model, args.cores)
        theirs_seconds, theirs = run_weightwatcher(model)
    ours = ours[ours["type"] == "Conv2d"].set_index("layer")
    theirs = theirs[theirs["layer_type"].astype(str).str.lower().str.contains("conv2d")].set_index("longname")
    common = [name for name in ours.index if name in theirs.index]
    missing = sorted(set(ours.index) ^ set(theirs.index))
    print(f"ResNet-18, seed {args.seed}, random init; {len(common)} Conv2d layers in both"
          + (f"; in one only: {missing}" if missing else ""))
    print(f"{'layer':<24}{'alpha (ours)':>14}{'alpha (WW)':>14}{'rel. diff':>11}{'evals':>7}{'WW evals':>9}"
          f"{'lambda_max ours/WW':>20}")
    worst = 0.0
    for name in common:
        a, b = float(ours.at[name, "alpha"]), float(theirs.at[name, "alpha"])
        relative = abs(a - b) / abs(b)
        worst = max(worst, relative)
        ratio = float(ours.at[name, "lambda_max"]) / float(theirs.at[name, "lambda_max"])
        print(f"{name:<24}{a:>14.8f}{b:>14.8f}{relative:>11.1e}{int(ours.at[name, 'num_evals']):>7}"
              f"{int(theirs.at[name, 'num_evals']):>9}{ratio:>20.4f}")
    verdict = "same" if common and worst <= SAME_ALPHA and not missing else "DIFFERENT"
    print(f"\nworst relative alpha difference: {worst:.1e} ({verdict} within {SAME_ALPHA:g})")
    print(f"zooscope esd+fit {ours_seconds:.2f} s, WeightWatcher analyze() {theirs_seconds:.2f} s: "
          f"{theirs_seconds / ours_seconds:.1f}x (same run, {args.cores} threads; re-measure on an idle machine)")
    return 0 if verdict == "same" else 1


if __name__ == "__main__":
    sys.exit(main())
