"""The randomization check's routes on real-shaped matrices: error and time against the exact route.

Not run by pytest. In one run, per matrix shape and kind of matrix:

* exact: the shuffled matrix's float64 Gram and ``eigvalsh`` (zooscope before 2026-12-02);
* float32: :func:`zooscope.spectra.spectrum.shuffled_eigenvalues` (the route zooscope takes now);
* sub-sample (rejected, shown for the record): the ESD of a random n x m block of the shuffled matrix
  (k times smaller per side, same aspect ratio, eigenvalues scaled by N/n), k = 2 and 4.

For each it prints ``rand_distance`` (KS distance to the matrix's own ESD) and ``num_traps``
(shuffled eigenvalues above their Marchenko-Pastur edge) with their error against the exact route,
beside the seed-to-seed spread of the exact route (a second shuffle): an error below that spread is
below the statistic's own noise. Times are of the shuffled spectrum alone (shuffle included) and the
speed-up is exact / route, measured in the same run.

    python benchmarks/bench_randomize.py [--shapes 4096x25088,3072x768] [--kinds gaussian,t3,trained]
                                         [--threads 2]

Kinds: ``gaussian`` (iid entries, a random initialisation), ``t3`` (iid Student-t entries with 3
degrees of freedom: large entries, the matrices with correlation traps), ``trained`` (a
heavy-tailed ESD from correlations: Z T with Z Gaussian and T of power-law singular values, light-
tailed entries). About 5 minutes on 2 calm cores for the default shapes.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from threadpoolctl import threadpool_limits

from zooscope.spectra import spectrum
from zooscope.spectra.random_matrix import esd_distance, fit_marchenko_pastur

SEED, SECOND_SEED = 7, 8


def make(kind: str, rows: int, cols: int, rng) -> np.ndarray:
    n, m = max(rows, cols), min(rows, cols)
    if kind == "gaussian":
        w = rng.standard_normal((n, m), dtype=np.float32) / np.float32(np.sqrt(m))
    elif kind == "t3":
        w = (rng.standard_t(3, (n, m)) / np.sqrt(3 * m)).astype(np.float32)
    elif kind == "trained":
        q, _ = np.linalg.qr(rng.standard_normal((m, m)))
        t = (q * np.arange(1, m + 1) ** -0.75) @ q.T  # singular values k^-0.75: a power-law ESD tail
        w = (rng.standard_normal((n, m), dtype=np.float32) @ t.astype(np.float32)) / np.float32(np.sqrt(n))
    else:
        raise SystemExit(f"unknown kind {kind!r}; valid: gaussian, t3, trained")
    return w if rows >= cols else np.ascontiguousarray(w.T)


def exact(w: np.ndarray, seed: int) -> np.ndarray:
    return spectrum.eigenvalues(spectrum.shuffled(w, seed))


def sub_sample(w: np.ndarray, k: int, seed: int):
    n_rows, m_cols = spectrum.oriented_shape(w)
    m = max(1, round(m_cols / k))
    n = max(m, round(m * n_rows / m_cols))
    picked = np.random.default_rng(seed).choice(w.size, n * m, replace=False)
    return spectrum.eigenvalues(w.ravel()[picked].reshape(n, m)) * (n_rows / n), (n, m)


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="4096x25088,4096x4096,3072x768,50257x768",
                        help="rows x cols (PyTorch layout), comma-separated")
    parser.add_argument("--kinds", default="gaussian,t3,trained")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{args.threads} BLAS threads; load {os.getloadavg()[0]:.1f}")
    print(f"{'shape':<12}{'kind':<10}{'route':<12}{'seconds':>9}{'speed-up':>9}{'rand_dist':>11}{'error':>9}"
          f"{'traps':>7}   notes")
    with threadpool_limits(args.threads):
        for shape in args.shapes.split(","):
            rows, cols = (int(x) for x in shape.split("x"))
            for kind in args.kinds.split(","):
                w = make(kind, rows, cols, rng)
                n_rows, m_cols = spectrum.oriented_shape(w)
                original = spectrum.eigenvalues(w)
                t_exact, r_exact = timed(exact, w, SEED)
                ks = esd_distance(original, r_exact)
                traps = fit_marchenko_pastur(r_exact, (n_rows, m_cols)).num_spikes
                second = exact(w, SECOND_SEED)
                spread = abs(esd_distance(original, second) - ks)
                t_shuffle, _ = timed(spectrum.shuffled, w, SEED)
                print(f"{shape:<12}{kind:<10}{'exact':<12}{t_exact:>9.2f}{1:>8.1f}x{ks:>11.5f}{0:>9.1e}{traps:>7}   "
                      f"shuffle alone {t_shuffle:.2f} s; second seed: rand_distance {spread:+.1e}, traps "
                      f"{fit_marchenko_pastur(second, (n_rows, m_cols)).num_spikes}", flush=True)
                t_32, r_32 = timed(spectrum.shuffled_eigenvalues, w, SEED)
                err = float(np.max(np.abs(r_32 - r_exact)) / r_exact[-1])
                print(f"{'':<12}{'':<10}{'float32':<12}{t_32:>9.2f}{t_exact / t_32:>8.1f}x"
                      f"{esd_distance(original, r_32):>11.5f}{abs(esd_distance(original, r_32) - ks):>9.1e}"
                      f"{fit_marchenko_pastur(r_32, (n_rows, m_cols)).num_spikes:>7}   "
                      f"max |eigenvalue error| / lambda_max {err:.1e}", flush=True)
                for k in (2, 4):
                    t_sub, (r_sub, sub_shape) = timed(sub_sample, w, k, SEED)
                    print(f"{'':<12}{'':<10}{f'sub k={k}':<12}{t_sub:>9.2f}{t_exact / t_sub:>8.1f}x"
                          f"{esd_distance(original, r_sub):>11.5f}{abs(esd_distance(original, r_sub) - ks):>9.1e}"
                          f"{fit_marchenko_pastur(r_sub, sub_shape).num_spikes:>7}   {sub_shape[0]} x {sub_shape[1]}",
                          flush=True)
    print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
