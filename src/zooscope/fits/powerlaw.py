"""Power-law fit of the tail of an eigenvalue spectrum (Clauset, Shalizi & Newman 2009).

The definition (docs/fit.md) is a search over every candidate xmin:
for the sorted eigenvalues above the floor, x_0 <= ... <= x_{K-1}, candidate i (i < K-1)
has the tail x_i..x_{K-1} of n = K - i values, the closed-form continuous MLE

    alpha_i = 1 + n / sum_{j>=i} ln(x_j / x_i)

and the KS distance D_i = max_{k<n} |1 - (x_{i+k}/x_i)^(1-alpha_i) - k/n| (D_i = 1 when
alpha_i <= 1 or is not finite). The smallest D_i wins, the lowest i on ties.

Evaluating every D_i directly costs O(K^2), far too slow for spectra of 10^4..10^5 values;
:func:`fit_power_law` returns exactly the same winner at close to the cost of a sort:

* All alphas at once. sum_{j>=i} ln(x_j/x_i) = sum_{l>i} (K - l) ln(x_l/x_{l-1}): a suffix
  sum of non-negative terms, so there is no cancellation, and ln(x_l/x_{l-1}) is taken as
  log1p((x_l - x_{l-1}) / x_{l-1}), accurate even for nearly equal neighbours.
* Branch and bound instead of full KS scans. The KS terms at any subset of a tail give a
  lower bound LB_i <= D_i. Between two sampled positions a < b both the model CDF and the
  empirical k/n are non-decreasing, so no term in between exceeds LB_i + (b - a)/n: with
  the largest gap, UB_i >= D_i. A candidate with LB_i above the smallest known upper bound
  (any UB_j, or any exact D_j) cannot win and is dropped; a slack of 1e-12 guards against
  rounding, so the true winner and every candidate tied with it always survive.
* Pass 1 samples m = 8 evenly spaced positions of every tail (always k = 0 and k = n-1)
  through a padded (positions x candidates) index matrix; each further pass samples the
  survivors 4x more densely, until a survivor's samples are its whole tail (LB_i = D_i).
* Shared peaks. The tails are nested, so the position x_p where the KS term peaks is
  nearly the same for most candidates. After each pass a few survivors get their exact D
  (the smallest UB first, for a tight threshold, then the smallest LBs), and the term at
  their peak x_p is added to every survivor's LB. That one column prunes most of the
  survivors that even sampling cannot separate (D_i close to the minimum); the exact
  evaluations are budgeted at a quarter of the next pass's cost.
* The winner's alpha, D and n come from the same expressions as every other candidate's.
  Everything is numpy on blocks of at most 2^20 elements; Python loops run over passes,
  blocks and the few exact evaluations, never over all candidates or points. In practice
  the first pass dominates: about 8 K KS terms instead of the K^2 / 2 of a full search.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zooscope.config import FitSettings

__all__ = ["PowerLawFit", "fit_power_law"]

_CHUNK = 1 << 20  # elements per padded block (rows x sample columns)
_M0 = 8  # sample positions per candidate in the first pass
_GROW = 4  # sample density factor between passes
_TOL = 1e-12  # slack on the pruning threshold against rounding
_BUDGET = 0.25  # exact evaluations per pass: at most this fraction of the next pass


@dataclass(frozen=True)
class PowerLawFit:
    """Result of :func:`fit_power_law`.

    alpha: power-law exponent of the density, rho(x) ~ x^-alpha.
    xmin: start of the fitted tail (an eigenvalue).
    xmax: the largest eigenvalue (lambda_max).
    D: Kolmogorov-Smirnov distance between the tail and the fitted power law.
    sigma: (alpha - 1) / sqrt(num_pl_spikes), the standard error of alpha.
    num_pl_spikes: number of eigenvalues in the fitted tail (n = K - i).
    """

    alpha: float
    xmin: float
    xmax: float
    D: float
    sigma: float
    num_pl_spikes: int


def fit_power_law(eigenvalues, *, floor: float = FitSettings.floor) -> PowerLawFit:
    """Fit a power law to the tail of a spectrum, trying every eigenvalue as xmin.

    Parameters
    ----------
    eigenvalues : 1-D array-like of float
        Eigenvalues (non-negative up to -floor); the input is not modified.
    floor : float
        Only eigenvalues strictly above ``floor`` take part in the fit.

    Returns
    -------
    PowerLawFit
        The candidate with the smallest KS distance, the lowest xmin on ties.

    Raises
    ------
    ValueError
        On NaN/Inf, values below -floor, fewer than 2 values above the floor, or when all
        values above the floor are equal (no candidate has a finite alpha).
    """
    x = _tail_values(eigenvalues, floor)
    K = x.size

    # alpha_i for every candidate i = 0..K-2, from suffix sums of non-negative terms.
    log_gaps = np.log1p(np.diff(x) / x[:-1])  # ln(x_l / x_{l-1}), l = 1..K-1
    weights = np.arange(K - 1, 0, -1, dtype=np.float64)  # K - l
    s = np.cumsum((weights * log_gaps)[::-1])[::-1]  # sum_{j>=i} ln(x_j / x_i)
    n_all = np.arange(K, 1, -1, dtype=np.int64)  # n_i = K - i
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha_all = 1.0 + n_all / s
    valid = np.isfinite(alpha_all) & (alpha_all > 1.0)
    if not valid.any():
        raise ValueError("degenerate spectrum: all eigenvalues above the floor are equal")

    # A valid candidate always has D < 1, so candidates with D = 1 can never win.
    rows = np.flatnonzero(valid)
    best_i, best_d = _search(x, rows, n_all[rows], alpha_all[rows])

    alpha = float(alpha_all[best_i])
    n = int(n_all[best_i])
    return PowerLawFit(
        alpha=alpha,
        xmin=float(x[best_i]),
        xmax=float(x[-1]),
        D=float(best_d),
        sigma=float((alpha - 1.0) / np.sqrt(n)),
        num_pl_spikes=n,
    )


def _tail_values(eigenvalues, floor: float) -> np.ndarray:
    """Validated, sorted copy of the eigenvalues strictly above ``floor``."""
    floor = float(floor)
    if not np.isfinite(floor) or floor < 0:
        raise ValueError(f"floor must be a finite non-negative number, got {floor!r}")
    values = np.asarray(eigenvalues, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"eigenvalues must be a 1-D array, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("eigenvalues contain NaN or Inf")
    if values.size and values.min() < -floor:
        raise ValueError(
            f"eigenvalues contain negative values below -floor (-{floor:g}): "
            f"min {values.min():g}; expected the spectrum of W^T W"
        )
    x = np.sort(values[values > floor])
    if x.size < 2:
        raise ValueError(
            f"degenerate spectrum: only {x.size} eigenvalue(s) above the floor {floor:g}; "
            "need at least 2"
        )
    return x


def _search(x, rows, n, alpha):
    """Index and exact D of the best candidate among ``rows`` (ascending candidate indices).

    ``n`` and ``alpha`` are the tail sizes and exponents of ``rows``. Branch and bound:
    ``lb`` holds lower bounds of D (exact where ``exact``), ``threshold`` an upper bound of
    min D; a candidate with lb > threshold cannot win.
    """
    exact = np.zeros(rows.size, dtype=bool)
    lb = np.zeros(rows.size)
    threshold = np.inf
    m = _M0

    def prune():
        nonlocal rows, n, alpha, exact, lb, ub
        keep = lb <= threshold + _TOL
        rows, n, alpha, exact, lb, ub = (a[keep] for a in (rows, n, alpha, exact, lb, ub))

    while not exact.all():
        todo = np.flatnonzero(~exact)
        lo = np.maximum(lb[todo], _ks_grid(x, rows[todo], n[todo], alpha[todo], m))
        lb[todo] = lo
        done = n[todo] <= m  # the grid was the whole tail: lb == D
        exact[todo[done]] = True
        ub = lb.copy()
        ub[todo] += (np.floor((n[todo] - 1) / (m - 1)) + 1) / n[todo]  # max gap / n
        ub[exact] = lb[exact]
        threshold = min(threshold, ub.min())
        prune()
        # The KS maximum of most candidates sits at one of a few shared positions (the
        # tails overlap), so the position where an exact D peaks is a strong sample for
        # all: evaluate candidates exactly, first the smallest upper bound (a good
        # threshold), then the smallest lower bounds (the contenders whose peak is not
        # sampled yet), while that costs less than a fraction of the next, denser pass.
        budget = _BUDGET * m * _GROW * np.count_nonzero(~exact)
        spent = 0
        first = True
        while spent <= budget and not exact.all():
            rest = np.flatnonzero(~exact)
            c = rest[np.argmin(ub[rest] if first else lb[rest])]
            first = False
            d, peak = _ks_exact(x, rows[c], n[c], alpha[c])
            lb[c], exact[c] = d, True
            threshold = min(threshold, d)
            rest = np.flatnonzero(~exact)
            at = np.maximum(rows[c] + peak - rows[rest], 0)  # the same x; k = 0 gives 0
            lb[rest] = np.maximum(lb[rest], _ks_at(x, rows[rest], n[rest], alpha[rest], at))
            spent += n[c] + rest.size
            prune()
        m *= _GROW
    k = int(np.argmin(lb))  # rows are ascending, so argmin picks the lowest i on ties
    return int(rows[k]), float(lb[k])


def _ks_terms(x, i, k, expo, inv_n):
    """|1 - (x_{i+k}/x_i)^(1-alpha) - k/n|: the KS term of candidate i at tail position k."""
    f = (x[i + k] / x[i]) ** expo  # 1 - model CDF
    return np.abs(np.subtract(1.0, f, out=f) - k * inv_n)


def _ks_grid(x, rows, n, alpha, m):
    """Lower bounds of D_i: the max KS term over m evenly spaced positions of each tail.

    Position j < m of a tail of n values is k = floor(j (n-1)/(m-1) + 1/2): k = 0 and
    k = n - 1 are always sampled, and every k when n <= m (then the bound is D_i). Padded
    blocks are (positions x candidates) of at most _CHUNK elements, so the reductions run
    over contiguous rows.
    """
    m = int(min(m, n.max()))  # more positions than the longest tail would only repeat
    out = np.zeros(rows.size)
    cols = min(m, _CHUNK)
    step = max(1, _CHUNK // cols)
    for r0 in range(0, rows.size, step):
        sl = slice(r0, r0 + step)
        i, expo, inv_n = rows[sl], 1.0 - alpha[sl], 1.0 / n[sl]
        scale = (n[sl] - 1.0) / (m - 1)
        for c0 in range(0, m, cols):
            j = np.arange(c0, min(c0 + cols, m), dtype=np.float64)[:, None]
            k = (j * scale + 0.5).astype(np.intp)
            np.maximum(out[sl], _ks_terms(x, i, k, expo, inv_n).max(axis=0), out=out[sl])
    return out


def _ks_at(x, rows, n, alpha, k):
    """The KS term of each candidate at one tail position k (array) each: a lower bound."""
    out = np.empty(rows.size)
    for r0 in range(0, rows.size, _CHUNK):
        sl = slice(r0, r0 + _CHUNK)
        out[sl] = _ks_terms(x, rows[sl], k[sl], 1.0 - alpha[sl], 1.0 / n[sl])
    return out


def _ks_exact(x, i, n, alpha):
    """D_i of one candidate and the tail position k where its KS term peaks."""
    best, peak = -1.0, 0
    expo, inv_n = 1.0 - alpha, 1.0 / n
    for c0 in range(0, int(n), _CHUNK):
        k = np.arange(c0, min(c0 + _CHUNK, int(n)), dtype=np.intp)
        dev = _ks_terms(x, i, k, expo, inv_n)
        a = int(dev.argmax())
        if dev[a] > best:
            best, peak = float(dev[a]), c0 + a
    return best, peak
