"""Tests of zooscope.fits.powerlaw against a plain loop over every candidate xmin."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import zooscope.fits.powerlaw as pf
from zooscope import PowerLawFit, fit_power_law

FLOOR = 1e-5


def reference_fit(eigenvalues, floor=FLOOR):
    """docs/fit.md's definition, written as directly as possible: try every candidate."""
    x = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    x = x[x > floor]
    K = x.size
    best = None
    for i in range(K - 1):
        tail = x[i:]
        n = K - i
        total = np.sum(np.log(tail / x[i]))
        alpha = 1.0 + n / total if total > 0 else math.inf
        if not math.isfinite(alpha) or alpha <= 1:
            D = 1.0
        else:
            D = np.max(np.abs(1.0 - (tail / x[i]) ** (1.0 - alpha) - np.arange(n) / n))
        if best is None or D < best["D"]:  # strict: the first candidate wins ties
            best = dict(D=D, i=i, alpha=alpha, n=n, xmin=x[i])
    return best


def assert_matches_reference(x, floor=FLOOR):
    ref = reference_fit(x, floor)
    fit = fit_power_law(x, floor=floor)
    assert fit.xmin == ref["xmin"]
    assert fit.num_pl_spikes == ref["n"]
    assert fit.alpha == pytest.approx(ref["alpha"], rel=1e-9, abs=0)
    assert fit.D == pytest.approx(ref["D"], rel=1e-9, abs=1e-15)
    return fit


# --- sample generators (seeded) ---------------------------------------------------------


def pareto(rng, n, a, xmin=1.0):
    """Continuous Pareto sample with density ~ x^-a on [xmin, inf)."""
    return xmin * (1.0 - rng.random(n)) ** (-1.0 / (a - 1.0))


def mp_with_spikes(rng, n_rows, n_cols, strengths):
    """Eigenvalues of W^T W for Gaussian W plus planted rank-one signals."""
    W = rng.standard_normal((n_rows, n_cols))
    for s in strengths:
        u = rng.standard_normal(n_rows)
        v = rng.standard_normal(n_cols)
        W += s * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))
    return np.linalg.eigvalsh(W.T @ W)


SEEDS = [0, 1, 2, 3]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("a", [1.8, 2.5, 4.0])
def test_pareto_matches_reference(seed, a):
    rng = np.random.default_rng(1000 * seed + int(10 * a))
    assert_matches_reference(pareto(rng, int(rng.integers(200, 1500)), a))


@pytest.mark.parametrize("seed", SEEDS)
def test_marchenko_pastur_with_spikes_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n_cols = int(rng.integers(150, 500))
    ev = mp_with_spikes(rng, 2 * n_cols, n_cols, strengths=np.array([2, 4, 8, 16]) * np.sqrt(2 * n_cols))
    fit = assert_matches_reference(ev)
    assert fit.xmax == pytest.approx(ev.max())


@pytest.mark.parametrize("seed", SEEDS)
def test_lognormal_matches_reference(seed):
    rng = np.random.default_rng(100 + seed)
    assert_matches_reference(rng.lognormal(0.0, 1.0 + seed, size=int(rng.integers(100, 1500))))


@pytest.mark.parametrize("seed", range(12))
def test_small_spectra_match_reference(seed):
    rng = np.random.default_rng(200 + seed)
    n = 3 + seed % 8  # 3..10
    x = [pareto(rng, n, 2.5), rng.lognormal(0, 2, n), rng.random(n)][seed % 3]
    assert_matches_reference(x)


@pytest.mark.parametrize("seed", SEEDS)
def test_repeated_values_match_reference(seed):
    rng = np.random.default_rng(300 + seed)
    n = int(rng.integers(50, 800))
    assert_matches_reference(np.round(rng.lognormal(0, 1, n), 1))  # many ties
    assert_matches_reference(rng.integers(1, 6, n).astype(float))  # only 5 distinct values
    x = pareto(rng, n, 3.0)
    x[-5:] = x[-6]  # ties at the top: candidates with all-equal tails get D = 1
    assert_matches_reference(x)


@pytest.mark.parametrize("seed", SEEDS)
def test_values_at_or_below_floor_are_left_out(seed):
    rng = np.random.default_rng(400 + seed)
    x = np.concatenate(
        [
            pareto(rng, 500, 2.5, xmin=1e-3),
            np.zeros(50),
            np.full(5, FLOOR),  # at the floor: left out (strictly above is kept)
            rng.uniform(-FLOOR, FLOOR, 30),  # round-off negatives are accepted
        ]
    )
    rng.shuffle(x)
    fit = assert_matches_reference(x)
    kept = np.sort(x[x > FLOOR])
    assert fit.num_pl_spikes <= kept.size
    assert fit_power_law(kept) == fit


def test_floor_argument():
    rng = np.random.default_rng(5)
    x = pareto(rng, 400, 2.2, xmin=0.01)
    assert_matches_reference(x, floor=0.5)
    assert_matches_reference(x, floor=0.0)
    assert fit_power_law(x, floor=0.5) == fit_power_law(x[x > 0.5], floor=0.5)


def test_medium_spectrum_matches_reference():
    rng = np.random.default_rng(6)
    assert_matches_reference(mp_with_spikes(rng, 2000, 1200, strengths=[60, 90, 150]))


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_blocks_match_reference(monkeypatch, chunk):
    """Blocks far smaller than the tails exercise the row and column chunking."""
    monkeypatch.setattr(pf, "_CHUNK", chunk)
    rng = np.random.default_rng(7 + chunk)
    assert_matches_reference(pareto(rng, 300, 3.0))
    assert_matches_reference(np.round(rng.lognormal(0, 1, 200), 1))


def test_two_values():
    fit = fit_power_law([2.0, 1.0])
    assert fit.xmin == 1.0 and fit.xmax == 2.0 and fit.num_pl_spikes == 2
    assert fit.alpha == pytest.approx(1 + 2 / math.log(2), rel=1e-12)
    # a 2-point tail is always at KS distance |1 - e^-2 - 1/2| from its fit
    assert fit.D == pytest.approx(0.5 - math.exp(-2), rel=1e-12)


def test_alpha_is_accurate_for_short_tails_of_close_large_values():
    """sum ln(x_j/x_i) must not come from differences of large sums (cancellation)."""
    rng = np.random.default_rng(8)
    x = 1e8 * (1.0 + np.sort(rng.random(40)) * 1e-7)
    x = np.concatenate([x, pareto(rng, 2000, 2.5)])
    fit = fit_power_law(x)
    tail = np.sort(x)[np.sort(x) >= fit.xmin]
    exact_sum = math.fsum(math.log1p((t - fit.xmin) / fit.xmin) for t in tail)
    assert fit.alpha == pytest.approx(1 + tail.size / exact_sum, rel=1e-10)


@pytest.mark.parametrize(("a", "seed"), [(2.5, 11), (3.0, 12), (4.0, 13)])
def test_recovers_known_exponent(a, seed):
    rng = np.random.default_rng(seed)
    x = pareto(rng, 20000, a)
    fit = fit_power_law(x)
    assert abs(fit.alpha - a) < 4 * fit.sigma
    assert fit.sigma < 0.05
    assert fit.num_pl_spikes > 1000


def test_fields_are_consistent():
    rng = np.random.default_rng(9)
    x = mp_with_spikes(rng, 600, 300, strengths=[60, 100])
    fit = fit_power_law(x)
    assert isinstance(fit, PowerLawFit)
    assert fit.xmax == x.max()
    assert fit.xmin in x
    assert fit.num_pl_spikes == np.count_nonzero(x >= fit.xmin)  # no ties in this spectrum
    assert fit.sigma == pytest.approx((fit.alpha - 1) / math.sqrt(fit.num_pl_spikes), rel=1e-12)
    assert 0 <= fit.D < 1
    assert fit.alpha > 1
    assert all(type(getattr(fit, f)) is float for f in ("alpha", "xmin", "xmax", "D", "sigma"))
    assert type(fit.num_pl_spikes) is int
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.alpha = 2.0  # type: ignore[misc]


def test_input_is_not_modified_and_order_does_not_matter():
    rng = np.random.default_rng(10)
    x = pareto(rng, 500, 2.5)
    before = x.copy()
    fit = fit_power_law(x)
    np.testing.assert_array_equal(x, before)
    assert fit_power_law(list(x)) == fit
    assert fit_power_law(tuple(x[::-1])) == fit
    assert fit_power_law(x.astype(np.float32)) == fit_power_law(x.astype(np.float32).astype(float))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1.0, np.nan, 2.0], "eigenvalues contain NaN or Inf"),
        ([1.0, np.inf, 2.0], "eigenvalues contain NaN or Inf"),
        ([1.0, -np.inf], "eigenvalues contain NaN or Inf"),
        ([1.0, 2.0, -0.5], "negative values below -floor"),
        ([], "degenerate spectrum: only 0 eigenvalue(s) above the floor 1e-05; need at least 2"),
        ([3.0], "degenerate spectrum: only 1 eigenvalue(s) above the floor 1e-05; need at least 2"),
        (
            [0.0, 1e-6, 1e-5, 2.0],
            "degenerate spectrum: only 1 eigenvalue(s) above the floor 1e-05; need at least 2",
        ),
        ([2.0, 2.0], "flat spectrum: all 2 eigenvalues above the floor are within 0.0e+00 of the largest (2)"),
        ([0.0, 0.0, 4.0, 4.0, 4.0], "flat spectrum: all 3 eigenvalues above the floor are within 0.0e+00"),
    ],
)
def test_errors(values, message):
    with pytest.raises(ValueError) as err:
        fit_power_law(values)
    assert message in str(err.value)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_an_orthogonal_matrix_has_a_flat_spectrum_and_no_fit(dtype):
    """W^T W = I up to rounding (RWKV's and ConViT's initialisations): its eigenvalues, computed in
    float64 or through a float32 Gram matrix, spread by rounding alone (well under FLAT_SPREAD of
    lambda_max), and fitting that noise gave alphas in the millions; a spread the eigenvalues do
    resolve is fitted."""
    from zooscope.fits.powerlaw import FLAT_SPREAD

    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((400, 200)))
    w = q.astype(dtype)
    eigenvalues = np.linalg.eigvalsh((w.T @ w).astype(np.float64))
    spread = (eigenvalues.max() - eigenvalues.min()) / eigenvalues.max()
    assert 0 < spread < FLAT_SPREAD / 5
    with pytest.raises(ValueError, match=r"flat spectrum: all 200 eigenvalues above the floor are within"):
        fit_power_law(3.0 * eigenvalues)
    resolved = 1.0 + 10 * FLAT_SPREAD * np.sort(rng.random(200))
    assert fit_power_law(resolved).num_pl_spikes >= 2


def test_error_on_bad_shape_and_floor():
    with pytest.raises(ValueError, match="1-D"):
        fit_power_law(np.ones((3, 3)))
    with pytest.raises(ValueError, match="floor"):
        fit_power_law([1.0, 2.0], floor=-1.0)
    with pytest.raises(ValueError, match="floor"):
        fit_power_law([1.0, 2.0], floor=np.nan)


# --- many rows at once (the bootstrap's and the p-value's refits) ----------------------------


def sorted_rows(rng, K):
    """Rows of different shapes: Pareto tails, an MP bulk with spikes, repeated values, and one
    row of equal values (no candidate has a finite alpha)."""
    rows = [pareto(rng, K, 2.2), pareto(rng, K, 4.5, xmin=3.0),
            mp_with_spikes(rng, 3 * K, K, strengths=[30, 50]),
            np.round(rng.lognormal(0, 1, K), 1) + 0.1, np.full(K, 2.0)]
    return np.sort(np.array(rows), axis=1)


@pytest.mark.parametrize("chunk", [1, 40, 1 << 20])
def test_rows_fit_like_the_reference_each(monkeypatch, chunk):
    """fit_sorted_rows gives every row the reference's candidate; with a small _CHUNK the rows
    are taken in several blocks."""
    monkeypatch.setattr(pf, "_CHUNK", chunk)
    X = sorted_rows(np.random.default_rng(11), 120)
    fits = pf.fit_sorted_rows(X)
    for r, x in enumerate(X[:-1]):
        ref = reference_fit(x, floor=0.0)
        assert fits.xmin[r] == ref["xmin"] and fits.num_pl_spikes[r] == ref["n"]
        assert fits.alpha[r] == pytest.approx(ref["alpha"], rel=1e-9, abs=0)
        assert fits.D[r] == pytest.approx(ref["D"], rel=1e-9, abs=1e-15)
        assert fits.sigma[r] == pytest.approx((ref["alpha"] - 1.0) / math.sqrt(ref["n"]), rel=1e-9)
        assert fits.xmax[r] == x[-1]
    # the row of equal values has no fit
    assert math.isnan(fits.alpha[-1]) and math.isnan(fits.D[-1]) and fits.num_pl_spikes[-1] == 0


def test_rows_with_an_xmin_range_match_single_fits():
    """Each row restricted to [lo, hi] (and a row with no candidate inside: the nearest) gets
    what fit_sorted gives it alone, which is checked against the reference over the range."""
    rng = np.random.default_rng(12)
    X = sorted_rows(rng, 90)[:-1]
    lo, hi = float(np.median(X[0])), float(np.median(X[0]) * 1.5)
    fits = pf.fit_sorted_rows(X, (lo, hi))
    for r, x in enumerate(X):
        one = pf.fit_sorted(x, (lo, hi))
        assert (fits.alpha[r], fits.xmin[r], fits.D[r], fits.num_pl_spikes[r]) == (
            one.alpha, one.xmin, one.D, one.num_pl_spikes)
        inside = (x[:-1] >= lo) & (x[:-1] <= hi)
        if inside.any():
            assert lo <= one.xmin <= hi
    # brute force for the first row: the smallest D over the candidates in the range
    x = X[0]

    def distance(i):  # D of candidate i, as in reference_fit
        tail, n = x[i:], x.size - i
        alpha = 1.0 + n / np.sum(np.log(tail / x[i]))
        return np.max(np.abs(1.0 - (tail / x[i]) ** (1.0 - alpha) - np.arange(n) / n))

    best = min(distance(i) for i in np.flatnonzero((x[:-1] >= lo) & (x[:-1] <= hi)))
    assert fits.D[0] == pytest.approx(best, rel=1e-9)


def test_rows_shape_errors():
    with pytest.raises(ValueError, match=r"\(rows x K\) array with K >= 2"):
        pf.fit_sorted_rows(np.ones(5))
    with pytest.raises(ValueError, match=r"\(rows x K\) array with K >= 2"):
        pf.fit_sorted_rows(np.ones((3, 1)))
