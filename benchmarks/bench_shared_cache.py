"""Benchmark: the shared ESD store on a zoo of one base and ten fine-tunes of its last layers.

Not run by pytest.

    python benchmarks/bench_shared_cache.py [--fine-tunes 10] [--layers 8] [--width 512] [--changed 2]

Writes a base model (``--layers`` Linear layers of ``--width`` x ``--width``, heavy-tailed entries)
and ``--fine-tunes`` models that share all of its layers but the last ``--changed`` ones, then runs
the esd stage's library call (zooscope.spectra.esd.compute_model_esd, with ``randomize`` as in the
default config) on every model, twice in the same process: without the store (each model computes
all of its layers, as before the store) and with a fresh one (config shared_cache). Prints the
spectra each run computed (exact: layers + fine-tunes x changed with the store) and the wall times,
and the ratio of the two times; the ratio is the figure to compare across machines (both runs see
the same load).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def write_model(directory: Path, weights: list[np.ndarray], model: str) -> None:
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors, layers = {}, []
    for depth, weight in enumerate(weights):
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        tensors[f"fc{depth}.weight"] = weight
        layers.append({"name": f"fc{depth}", "tensor": f"fc{depth}.weight", "type": "Linear",
                       "shape": list(weight.shape), "depth": depth,
                       "sha256": hashlib.sha256(weight.tobytes()).hexdigest()})
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "layers.json").write_text(json.dumps({"model": model, "layers": layers}))


def make_zoo(root: Path, fine_tunes: int, layers: int, width: int, changed: int) -> list[Path]:
    rng = np.random.default_rng(0)
    base = [rng.standard_t(df=3, size=(width, width)) / np.sqrt(width) for _ in range(layers)]
    dirs = [root / "base"]
    write_model(dirs[0], base, "base")
    for i in range(fine_tunes):
        tuned = base[:layers - changed] + [w + 0.05 * rng.standard_normal(w.shape) / np.sqrt(width)
                                           for w in base[layers - changed:]]
        dirs.append(root / f"ft{i}")
        write_model(dirs[-1], tuned, f"ft{i}")
    return dirs


def run_zoo(dirs: list[Path], out: Path, store: Path | None) -> tuple[float, int]:
    """(wall seconds, spectra computed) of the esd stage over the zoo."""
    from zooscope.config import EsdSettings
    from zooscope.spectra import spectrum
    from zooscope.spectra.esd import compute_model_esd

    calls = []
    original = spectrum.eigenvalues
    spectrum.eigenvalues = lambda m, **kw: calls.append(1) or original(m, **kw)
    try:
        start = time.perf_counter()
        for directory in dirs:
            compute_model_esd(directory / "model.safetensors", directory / "layers.json", out / directory.name,
                              EsdSettings(randomize=True), shared_cache=store)
        return time.perf_counter() - start, len(calls) // 2  # each spectrum and its shuffled copy
    finally:
        spectrum.eigenvalues = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fine-tunes", type=int, default=10)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--changed", type=int, default=2)
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    with tempfile.TemporaryDirectory() as scratch, threadpool_limits(1):
        root = Path(scratch)
        dirs = make_zoo(root / "zoo", args.fine_tunes, args.layers, args.width, args.changed)
        alone, alone_spectra = run_zoo(dirs, root / "alone", None)
        shared, shared_spectra = run_zoo(dirs, root / "shared", root / "store")
    total = len(dirs) * args.layers
    print(f"zoo: 1 base + {args.fine_tunes} fine-tunes of its last {args.changed} of {args.layers} layers "
          f"({args.width} x {args.width}), {total} layers")
    print(f"without the shared store: {alone_spectra} spectra computed in {alone:.2f} s")
    print(f"with the shared store:    {shared_spectra} spectra computed in {shared:.2f} s "
          f"(expected {args.layers + args.fine_tunes * args.changed})")
    print(f"time ratio (without / with): {alone / shared:.2f}x; spectra ratio {alone_spectra / shared_spectra:.2f}x")


if __name__ == "__main__":
    main()
