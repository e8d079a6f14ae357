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
* Pass 1 samples m = 4 evenly spaced positions of every tail (always k = 0 and k = n-1)
  through a padded (positions x candidates) index matrix; each further pass samples the
  survivors 8x more densely, until a survivor's samples are its whole tail (LB_i = D_i).
* Shared peaks. The tails are nested, so the position x_p where the KS term peaks is
  nearly the same for most candidates. After each pass a few survivors get their exact D
  (the smallest UB first, for a tight threshold, then the smallest LBs), and the term at
  their peak x_p is added to every survivor's LB. That one column prunes most of the
  survivors that even sampling cannot separate (D_i close to the minimum); the exact
  evaluations are budgeted at a quarter of the next pass's cost.
* The winner's alpha, D and n come from the same expressions as every other candidate's.
  Everything is numpy on blocks of at most 2^20 elements; Python loops run over passes,
  blocks and the few exact evaluations, never over all candidates or points. In practice
  the first pass dominates: about 4 K KS terms instead of the K^2 / 2 of a full search.
* Many fits at once (:func:`fit_sorted_rows`, the bootstrap's and the p-value's refits): the
  candidates of every row go through one search, each row (group) with its own threshold, its
  own exact evaluations and its own winner, so a hundred refits cost the numpy calls of one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zooscope.config import FitSettings

__all__ = ["PowerLawFit", "PowerLawFits", "fit_power_law", "fit_sorted", "fit_sorted_rows", "sorted_above_floor"]

_CHUNK = 1 << 20  # elements per padded block (rows x sample columns)
# Sample positions per candidate in the first pass, and the density factor between passes: 4 and
# 8 refit the benchmark zoo's bootstrap resamples 6% faster than 8 and 4 (the same fits).
_M0 = 4
_GROW = 8
_TOL = 1e-12  # slack on the pruning threshold against rounding
_BUDGET = 0.25  # exact evaluations per pass: at most this fraction of the next pass
# A spectrum whose whole range is below this fraction of its largest value is flat to the accuracy
# of the eigenvalues (about 1e-6 of lambda_max with the float32 Gram, docs/speed.md): an
# orthogonal or scaled-identity matrix, as RWKV and ConViT initialise some layers. A tail fitted
# to it is a fit of rounding noise: WeightWatcher 0.7.7 gives RWKV's orthogonal init alpha ~4e6,
# and the float32 and float64 Gram routes give two different such alphas.
FLAT_SPREAD = 1e-5


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


def fit_power_law(eigenvalues, *, floor: float = FitSettings.floor,
                  xmin_range: tuple[float, float] | None = None) -> PowerLawFit:
    """Fit a power law to the tail of a spectrum, trying every eigenvalue as xmin.

    Parameters
    ----------
    eigenvalues : 1-D array-like of float
        Eigenvalues (non-negative up to -floor); the input is not modified.
    floor : float
        Only eigenvalues strictly above ``floor`` take part in the fit.
    xmin_range : (lo, hi), optional
        Only eigenvalues in [lo, hi] are candidate xmins (config ``fit.fingers: xmin_peak``,
        :mod:`zooscope.fits.fingers`); when none is, the eigenvalue nearest to the range is.

    Returns
    -------
    PowerLawFit
        The candidate with the smallest KS distance, the lowest xmin on ties.

    Raises
    ------
    ValueError
        On NaN/Inf, values below -floor, fewer than 2 values above the floor, or when the
        values above the floor are flat: equal, or within FLAT_SPREAD of the largest.
    """
    return fit_sorted(sorted_above_floor(eigenvalues, floor), xmin_range)


def fit_sorted(x: np.ndarray, xmin_range: tuple[float, float] | None = None) -> PowerLawFit:
    """:func:`fit_power_law` of values already validated, above the floor and sorted ascending
    (at least 2): the fingers' refits skip the checks and the sort."""
    fits = fit_sorted_rows(x[None, :], xmin_range)
    if fits.num_pl_spikes[0] == 0:
        if xmin_range is not None:
            raise ValueError(f"no candidate xmin in [{xmin_range[0]:g}, {xmin_range[1]:g}] has a tail with alpha > 1 "
                             "(fit.fingers: xmin_peak); use fit.fingers null or clip_xmax")
        raise ValueError("degenerate spectrum: all eigenvalues above the floor are equal")
    return PowerLawFit(alpha=float(fits.alpha[0]), xmin=float(fits.xmin[0]), xmax=float(fits.xmax[0]),
                       D=float(fits.D[0]), sigma=float(fits.sigma[0]), num_pl_spikes=int(fits.num_pl_spikes[0]))


@dataclass(frozen=True)
class PowerLawFits:
    """Result of :func:`fit_sorted_rows`: the fields of :class:`PowerLawFit` as arrays, one entry
    per row; a degenerate row (no candidate with a finite alpha > 1) has NaN and num_pl_spikes 0."""

    alpha: np.ndarray
    xmin: np.ndarray
    xmax: np.ndarray
    D: np.ndarray
    sigma: np.ndarray
    num_pl_spikes: np.ndarray


def fit_sorted_rows(samples: np.ndarray, xmin_range: tuple[float, float] | None = None) -> PowerLawFits:
    """:func:`fit_sorted` of every row of a (rows x K) array of sorted samples, at once.

    The bootstrap's resamples and the p-value's synthetic samples are refitted this way: one
    branch and bound over the candidates of many rows (each row keeps its own threshold) costs
    the numpy calls of one fit, where a fit per row spent most of its time in their overhead.
    Every row gets exactly the fit :func:`fit_sorted` would give it. Rows are taken in blocks
    of at most _CHUNK values, which bounds the memory.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] < 2:
        raise ValueError(f"samples must be a (rows x K) array with K >= 2, got shape {samples.shape}")
    step = max(1, _CHUNK // samples.shape[1])
    parts = [_fit_block(samples[r0:r0 + step], xmin_range) for r0 in range(0, samples.shape[0], step)]
    return PowerLawFits(*(np.concatenate([part[f] for part in parts]) for f in range(6)))


def _fit_block(X: np.ndarray, xmin_range) -> tuple[np.ndarray, ...]:
    R, K = X.shape
    # alpha_i for every candidate i = 0..K-2, from suffix sums of non-negative terms.
    log_gaps = np.log1p(np.diff(X, axis=1) / X[:, :-1])  # ln(x_l / x_{l-1}), l = 1..K-1
    weights = np.arange(K - 1, 0, -1, dtype=np.float64)  # K - l
    s = np.cumsum((weights * log_gaps)[:, ::-1], axis=1)[:, ::-1]  # sum_{j>=i} ln(x_j / x_i)
    n_all = np.arange(K, 1, -1, dtype=np.int64)  # n_i = K - i
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha_all = 1.0 + n_all / s
    valid = np.isfinite(alpha_all) & (alpha_all > 1.0)
    if xmin_range is not None:
        valid &= _in_range(X[:, :-1], xmin_range)

    # A valid candidate always has D < 1, so candidates with D = 1 can never win.
    flat = np.flatnonzero(valid)  # row-major, so rows and candidates ascend
    group, i = np.divmod(flat, K - 1)
    best = _search(X.ravel(), group * K + i, group, n_all[i], alpha_all.ravel()[flat], R)
    found = best.index >= 0
    alpha, xmin, D, sigma = (np.full(R, np.nan) for _ in range(4))
    num = np.zeros(R, dtype=np.int64)
    won = flat[best.index[found]]
    alpha[found] = alpha_all.ravel()[won]
    xmin[found] = X[:, :-1].ravel()[won]
    num[found] = n_all[i[best.index[found]]]
    D[found] = best.D[found]
    sigma[found] = (alpha[found] - 1.0) / np.sqrt(num[found])
    return alpha, xmin, X[:, -1].copy(), D, sigma, num


def _in_range(candidates: np.ndarray, xmin_range: tuple[float, float]) -> np.ndarray:
    """Candidates (rows x K-1) in [lo, hi]; in a row with none, the one nearest to the range (in
    log scale)."""
    lo, hi = (float(v) for v in xmin_range)
    inside = (candidates >= lo) & (candidates <= hi)
    none = ~inside.any(axis=1)
    if none.any():
        c = candidates[none]
        distance = np.maximum(np.log(lo / c), np.log(c / hi))
        inside[none] = distance == distance.min(axis=1, keepdims=True)
    return inside


def sorted_above_floor(eigenvalues, floor: float) -> np.ndarray:
    """Validated, sorted copy of the eigenvalues strictly above ``floor``; a ValueError if fewer
    than 2 or flat (their range at most FLAT_SPREAD of the largest)."""
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
    if x[-1] - x[0] <= FLAT_SPREAD * x[-1]:
        raise ValueError(
            f"flat spectrum: all {x.size} eigenvalues above the floor are within {(x[-1] - x[0]) / x[-1]:.1e} "
            f"of the largest ({x[-1]:.6g}), below the eigenvalues' accuracy ({FLAT_SPREAD:g}): an orthogonal or "
            "scaled-identity matrix has no power-law tail"
        )
    return x


@dataclass(frozen=True)
class _Best:
    index: np.ndarray  # per group: position of its winner in the candidate arrays, -1 if none
    D: np.ndarray  # per group: the winner's exact D (NaN if none)


def _search(x, rows, group, n, alpha, groups: int) -> _Best:
    """The best candidate of each group (a row of samples): its position and exact D.

    ``rows`` are the candidates' indices into the flat samples ``x`` (ascending: by group, then
    candidate), ``group`` their row, ``n`` and ``alpha`` their tail sizes and exponents. Branch
    and bound: ``lb`` holds lower bounds of D (exact where ``exact``), ``threshold`` an upper
    bound of each group's min D; a candidate with lb > its group's threshold cannot win.
    """
    index = np.arange(rows.size)
    exact = np.zeros(rows.size, dtype=bool)
    lb = np.zeros(rows.size)
    ub = lb
    threshold = np.full(groups, np.inf)
    m = _M0

    def prune():
        nonlocal index, rows, group, n, alpha, exact, lb, ub
        keep = lb <= threshold[group] + _TOL
        index, rows, group, n, alpha, exact, lb, ub = (a[keep] for a in (index, rows, group, n, alpha, exact, lb, ub))

    while not exact.all():
        todo = np.flatnonzero(~exact)
        lo = np.maximum(lb[todo], _ks_grid(x, rows[todo], n[todo], alpha[todo], m))
        lb[todo] = lo
        done = n[todo] <= m  # the grid was the whole tail: lb == D
        exact[todo[done]] = True
        ub = lb.copy()
        ub[todo] += (np.floor((n[todo] - 1) / (m - 1)) + 1) / n[todo]  # max gap / n
        ub[exact] = lb[exact]
        np.minimum(threshold, _group_min(ub, group, groups), out=threshold)
        prune()
        # The KS maximum of most candidates sits at one of a few shared positions (the
        # tails overlap), so the position where an exact D peaks is a strong sample for
        # all: evaluate candidates exactly, first the smallest upper bound (a good
        # threshold), then the smallest lower bounds (the contenders whose peak is not
        # sampled yet), while that costs less than a fraction of the next, denser pass;
        # one candidate of every group per round.
        budget = _BUDGET * m * _GROW * np.bincount(group[~exact], minlength=groups)
        spent = np.zeros(groups)
        key = ub
        active = budget > 0
        while active.any():
            c = _group_argmin(np.where(~exact & active[group], key, np.inf), group, groups)
            c = c[c >= 0]
            d, peak = _ks_exact(x, rows[c], n[c], alpha[c])
            lb[c], exact[c] = d, True
            g = group[c]
            threshold[g] = np.minimum(threshold[g], d)
            at_x = np.full(groups, -1)
            at_x[g] = rows[c] + peak  # the flat index of each evaluated candidate's peak
            rest = np.flatnonzero(~exact & (at_x[group] >= 0))
            at = np.maximum(at_x[group[rest]] - rows[rest], 0)  # the same x; k = 0 gives 0
            lb[rest] = np.maximum(lb[rest], _ks_at(x, rows[rest], n[rest], alpha[rest], at))
            spent[g] += n[c]
            spent += np.bincount(group[rest], minlength=groups)
            prune()
            key = lb
            active = (spent <= budget) & (np.bincount(group[~exact], minlength=groups) > 0)
        m *= _GROW
    best = _group_argmin(lb, group, groups)  # rows ascend, so the lowest i wins ties
    has = best >= 0
    out = _Best(index=np.full(groups, -1), D=np.full(groups, np.nan))
    out.index[has], out.D[has] = index[best[has]], lb[best[has]]
    return out


def _group_min(values, group, groups: int) -> np.ndarray:
    """The minimum of ``values`` in each group (``group`` ascending; inf for an empty group)."""
    out = np.full(groups, np.inf)
    if values.size:
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        out[group[starts]] = np.minimum.reduceat(values, starts)
    return out


def _group_argmin(values, group, groups: int) -> np.ndarray:
    """Per group, the first position of its minimum of ``values`` (``group`` ascending); -1 for
    a group with no entry or only infinite ones."""
    smallest = _group_min(values, group, groups)
    at = np.flatnonzero((values == smallest[group]) & np.isfinite(values))
    first = at[np.r_[True, group[at][1:] != group[at][:-1]]] if at.size else at
    out = np.full(groups, -1)
    out[group[first]] = first
    return out


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


def _ks_exact(x, rows, n, alpha):
    """D of each candidate and the tail position k where its KS term peaks (the first on ties).

    Padded blocks of (candidates x positions), at most _CHUNK elements; positions beyond a tail
    count -1, below any term.
    """
    best = np.full(rows.size, -1.0)
    peak = np.zeros(rows.size, dtype=np.intp)
    width = int(n.max()) if n.size else 0
    cols = min(width, _CHUNK)
    step = max(1, _CHUNK // max(cols, 1))
    for r0 in range(0, rows.size, step):
        sl = slice(r0, r0 + step)
        i, expo, inv_n, size = rows[sl, None], 1.0 - alpha[sl, None], 1.0 / n[sl, None], n[sl, None]
        for c0 in range(0, width, cols):
            k = np.arange(c0, min(c0 + cols, width), dtype=np.intp)[None, :]
            dev = _ks_terms(x, i, np.minimum(k, size - 1), expo, inv_n)
            dev[k >= size] = -1.0
            a = dev.argmax(axis=1)
            top = dev[np.arange(a.size), a]
            better = top > best[sl]
            best[sl] = np.where(better, top, best[sl])
            peak[sl] = np.where(better, c0 + a, peak[sl])
    return best, peak
