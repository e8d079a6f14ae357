"""Benchmark the uncertainty of a fit (docs/statistics.md) against doing the same with powerlaw.

Not run by pytest. Needs powerlaw 2.0.0 (``pip install -e .[bench]``):

    python benchmarks/bench_uncertainty.py [--n 4096] [--resamples 100] [--pl-resamples 2] [--seed 0]

Part 1, one layer of n eigenvalues (a Marchenko-Pastur bulk with planted spikes, the shape of a
trained layer's ESD), in one run:

* bootstrap: zooscope.fits.bootstrap.bootstrap_fit with ``--resamples`` resamples, against
  powerlaw.Fit (its full xmin search, xmax = max) on ``--pl-resamples`` of the same resamples,
  extrapolated to ``--resamples`` (powerlaw takes seconds per fit);
* p-value: zooscope.fits.goodness.power_law_p_value against powerlaw.Fit on that many of the same
  kind of synthetic samples, extrapolated;
* likelihood ratios: zooscope.fits.goodness.compare_alternatives against powerlaw.Fit at the same
  xmin and its three distribution_compare calls.

It prints each time, the ratio powerlaw / zooscope, and the target (bootstrap + p-value under 1 s).

Part 2, the demo zoo's fitted matrices (the sizes of zoos/demo.tsv's: 18 MLP matrices of 64 to
512 eigenvalues, 54 CNN kernel slices of 64 to 128, 4 LeNet matrices of 512), each a seeded
Gaussian bulk with spikes: the time of zooscope.analysis.metrics.spectrum_metrics over all of
them without uncertainty, with each part alone and with config.yaml's defaults, i.e. what the
defaults add to the demo run's fit jobs (before dividing by the cores).

BLAS is pinned to one thread, as in the fit job (zooscope.jobs: threadpool_limits to the rule's
threads): unpinned, L-BFGS-B's small BLAS calls (the etpl fit) cost 10-50x more on a busy machine.

Timings on a loaded machine are not trustworthy: compare the ratios of one run, and re-measure
on an idle one.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import time
import warnings

import numpy as np

from zooscope.analysis.metrics import spectrum_metrics
from zooscope.config import FitSettings
from zooscope.fits.bootstrap import bootstrap_fit, resample_sorted
from zooscope.fits.goodness import compare_alternatives, power_law_p_value, synthetic_samples
from zooscope.fits.powerlaw import fit_power_law

# (number of matrices, eigenvalues per matrix, rows per column) of the demo zoo's fitted matrices
DEMO_MATRICES = [(9, 64, 2), (1, 64, 1), (1, 128, 1), (1, 256, 1), (6, 512, 1),
                 (18, 64, 1), (18, 96, 1), (18, 128, 1), (4, 512, 1)]


@contextlib.contextmanager
def quiet():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def bulk_with_spikes(rng, m, ratio=2, strengths=(2.0, 3.0, 5.0)):
    """Eigenvalues of W^T W, W Gaussian (ratio*m x m) plus rank-one signals above the BBP edge."""
    n = ratio * m
    w = rng.standard_normal((n, m))
    for s in strengths:
        u, v = rng.standard_normal(n), rng.standard_normal(m)
        w += s * (n * m) ** 0.25 * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))
    return np.linalg.eigvalsh(w.T @ w)


def clock(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def powerlaw_fits(powerlaw, samples):
    """Seconds of powerlaw.Fit (full xmin search) per sample."""
    start = time.perf_counter()
    with quiet():
        for sample in samples:
            powerlaw.Fit(sample, xmax=float(np.max(sample)), verbose=0).alpha  # noqa: B018
    return (time.perf_counter() - start) / len(samples)


def powerlaw_compare(powerlaw, x, xmin):
    with quiet():
        fit = powerlaw.Fit(x, xmin=xmin, verbose=0)
        for other in ("exponential", "lognormal", "truncated_power_law"):
            fit.distribution_compare("power_law", other, normalized_ratio=True)


def layer(args, powerlaw):
    rng = np.random.default_rng(args.seed)
    x = np.sort(bulk_with_spikes(rng, args.n))
    x = x[x > 1e-5]
    fit = fit_power_law(x)
    print(f"part 1: one layer of {x.size} eigenvalues (Gaussian bulk with 3 spikes), alpha {fit.alpha:.3f}, "
          f"tail of {fit.num_pl_spikes}; {args.resamples} resamples, powerlaw timed on {args.pl_resamples} and "
          f"extrapolated; numpy {np.__version__}, powerlaw {getattr(powerlaw, '__version__', '?')}, "
          f"cpus {os.cpu_count()}")
    t_boot, ci = clock(lambda: bootstrap_fit(x, resamples=args.resamples, seed=1))
    t_gof, gof = clock(lambda: power_law_p_value(x, fit, resamples=args.resamples, seed=2))
    t_lr, _ = clock(lambda: compare_alternatives(x, fit))
    some = resample_sorted(x, args.pl_resamples, np.random.default_rng(3))
    pl_boot = powerlaw_fits(powerlaw, some) * args.resamples
    pl_gof = powerlaw_fits(powerlaw, synthetic_samples(x, fit, args.pl_resamples, np.random.default_rng(4))) \
        * args.resamples
    pl_lr, _ = clock(lambda: powerlaw_compare(powerlaw, x, fit.xmin))
    print(f"  interval of alpha [{ci.alpha_lo:.3f}, {ci.alpha_hi:.3f}], p-value {gof.p_value:.2f}")
    print(f"  {'task':<28} {'zooscope s':>11} {'powerlaw s':>11} {'ratio':>8}")
    for name, ours, theirs in (("bootstrap", t_boot, pl_boot), ("goodness-of-fit p-value", t_gof, pl_gof),
                               ("likelihood ratios (3)", t_lr, pl_lr),
                               ("all", t_boot + t_gof + t_lr, pl_boot + pl_gof + pl_lr)):
        print(f"  {name:<28} {ours:11.3f} {theirs:11.1f} {theirs / ours:7.0f}x")
    print(f"  target: bootstrap + p-value of {args.resamples} resamples each under 1 s: "
          f"{'met' if t_boot + t_gof < 1.0 else 'NOT met'} ({t_boot + t_gof:.3f} s)")


def demo(args):
    rng = np.random.default_rng(args.seed + 1)
    spectra = [bulk_with_spikes(rng, m, ratio) for count, m, ratio in DEMO_MATRICES for _ in range(count)]
    point = FitSettings().without_uncertainty()
    settings = {
        "none": point,
        f"bootstrap {args.resamples}": dataclasses.replace(point, bootstrap=args.resamples),
        f"gof {args.resamples}": dataclasses.replace(point, gof=args.resamples),
        "alternatives": dataclasses.replace(point, alternatives=True),
        "defaults (config.yaml)": FitSettings(),
    }
    print()
    print(f"part 2: the demo zoo's {len(spectra)} fitted matrices ({min(s.size for s in spectra)} to "
          f"{max(s.size for s in spectra)} eigenvalues), spectrum_metrics over all of them")
    base = None
    for name, fit in settings.items():
        seconds, _ = clock(lambda: [spectrum_metrics(s, fit) for s in spectra])
        base = seconds if base is None else base
        print(f"  {name:<24} {seconds:7.2f} s   (+{seconds - base:6.2f} s, {(seconds - base) / len(spectra) * 1e3:6.1f} "
              f"ms per matrix)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4096, help="eigenvalues of the part-1 layer")
    parser.add_argument("--resamples", type=int, default=100)
    parser.add_argument("--pl-resamples", type=int, default=2, help="resamples powerlaw is timed on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-powerlaw", action="store_true", help="part 2 only")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        run(args)


def run(args):
    if not args.skip_powerlaw:
        with quiet():
            import powerlaw
        layer(args, powerlaw)
    demo(args)


if __name__ == "__main__":
    main()
