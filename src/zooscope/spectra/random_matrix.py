"""Random-matrix baselines of an ESD: the Marchenko-Pastur (MP) bulk and the randomization check.

Convention (docs/method.md, "Per matrix"): W is N x M with N >= M and the ESD is the M
eigenvalues of X = W^T W, without a 1/N factor. If W had iid entries of variance s^2, then as
N, M grow with y = M/N = 1/Q fixed, lambda / (s^2 N) follows the MP law of ratio y: density

    p_y(x) = sqrt((x_+ - x) (x - x_-)) / (2 pi y x)   on [x_-, x_+],  x_+- = (1 +- sqrt(y))^2,

with mean 1 and no atom at zero (M <= N). So the bulk of an unnormalised ESD ends at
lambda_+ = s^2 N (1 + 1/sqrt(Q))^2; with ``normalize: N`` the eigenvalues and the edge are
both divided by N, which changes nothing below because only the scale s^2 N is estimated.

The scale is estimated from the bulk, robustly: the median eigenvalue is matched to the median
of p_y. A few spikes (outliers above the bulk) move the sample median by a fraction of one
rank, while they would move the mean (the Frobenius norm) by their full size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["MarchenkoPasturFit", "fit_marchenko_pastur", "mp_density", "mp_median", "esd_distance"]

_GRID = 4097  # quadrature nodes of the MP CDF


@dataclass(frozen=True)
class MarchenkoPasturFit:
    """Result of :func:`fit_marchenko_pastur`.

    scale: s^2 N, the mean eigenvalue of the fitted MP bulk.
    ratio: y = M / N = 1 / Q.
    bulk_edge: lambda_+ = scale * (1 + sqrt(y))^2, the top of the fitted bulk (``mp_bulk_edge``).
    num_spikes: eigenvalues strictly above the bulk edge.
    softrank: bulk_edge / lambda_max (``mp_softrank``; above 1 when no eigenvalue leaves the bulk).
    """

    scale: float
    ratio: float
    bulk_edge: float
    num_spikes: int
    softrank: float


def _edges(ratio: float) -> tuple[float, float]:
    root = math.sqrt(ratio)
    return (1.0 - root) ** 2, (1.0 + root) ** 2


def mp_density(x, ratio: float, scale: float = 1.0) -> np.ndarray:
    """The MP density of eigenvalues lambda = scale * x, x ~ p_ratio (0 outside the bulk)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"MP ratio y = M/N must be in (0, 1], got {ratio}")
    lo, hi = _edges(ratio)
    x = np.asarray(x, dtype=np.float64) / scale
    inside = (x > lo) & (x < hi)
    out = np.zeros_like(x)
    xi = x[inside]
    out[inside] = np.sqrt((hi - xi) * (xi - lo)) / (2.0 * np.pi * ratio * xi)
    return out / scale


@lru_cache(maxsize=256)
def mp_median(ratio: float) -> float:
    """The median of p_ratio (unit scale).

    The CDF is integrated on x = x_- + (x_+ - x_-)(1 - cos t)/2, t in [0, pi]: the substitution
    cancels the square-root edges, so the integrand (x_+ - x_-)^2 sin^2 t / (8 pi y x) is smooth
    and the midpoint rule converges fast (also for y = 1, where x_- = 0; the midpoints never
    touch t = 0).
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"MP ratio y = M/N must be in (0, 1], got {ratio}")
    lo, hi = _edges(ratio)
    step = np.pi / _GRID
    t_mid = (np.arange(_GRID) + 0.5) * step
    f = (hi - lo) ** 2 * np.sin(t_mid) ** 2 / (8.0 * np.pi * ratio * (lo + (hi - lo) * (1.0 - np.cos(t_mid)) / 2.0))
    cdf = np.concatenate([[0.0], np.cumsum(f * step)])
    cdf /= cdf[-1]  # removes the quadrature's small error in the total mass
    t = np.arange(_GRID + 1) * step
    x = lo + (hi - lo) * (1.0 - np.cos(t)) / 2.0
    return float(np.interp(0.5, cdf, x))


def fit_marchenko_pastur(eigenvalues, shape: tuple[int, int]) -> MarchenkoPasturFit:
    """Fit the MP bulk to an ESD of a matrix of ``shape`` (N, M), N >= M, by the median.

    scale = median(lambda) / median(p_y) with y = M/N: see the module docstring for why the
    median. Eigenvalues above the edge are counted as spikes; for an iid matrix a few
    (typically 0 to 2) land just above it by finite-size fluctuations (Tracy-Widom, a width of
    order N^(-2/3) relative to the edge).
    """
    n_rows, m_cols = shape
    if not 0 < m_cols <= n_rows:
        raise ValueError(f"shape must be (N, M) with N >= M > 0, got {tuple(shape)}")
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    if values.size == 0 or not values[-1] > 0:
        raise ValueError("the MP fit needs a positive lambda_max")
    ratio = m_cols / n_rows
    scale = float(np.median(values)) / mp_median(ratio)
    edge = scale * _edges(ratio)[1]
    return MarchenkoPasturFit(
        scale=scale,
        ratio=ratio,
        bulk_edge=edge,
        num_spikes=int(values.size - np.searchsorted(values, edge, side="right")),
        softrank=edge / float(values[-1]),
    )


def esd_distance(eigenvalues, randomized) -> float:
    """``rand_distance``: the two-sample Kolmogorov-Smirnov distance between two ESDs.

    Why KS: it needs no bins or bandwidth, lies in [0, 1] (0: the shuffled matrix has the same
    spectrum), and is invariant to any monotone change of variable, so it reads the same on
    eigenvalues, singular values or their logs. Computed here (both empirical CDFs on the merged
    sample) rather than with scipy.stats.ks_2samp, whose import costs a fit job about a second.
    """
    a, b = np.sort(np.ravel(eigenvalues)), np.sort(np.ravel(randomized))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))
