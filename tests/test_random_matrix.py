import math

import numpy as np
import pytest
from scipy import integrate

from zooscope.spectra.random_matrix import esd_distance, fit_marchenko_pastur, mp_density, mp_median


def gram_eigenvalues(w):
    return np.linalg.eigvalsh(w.T @ w)


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.1, 0.01])
def test_mp_median_and_density_against_quadrature(ratio):
    lo, hi = (1 - math.sqrt(ratio)) ** 2, (1 + math.sqrt(ratio)) ** 2
    density = lambda x: mp_density(np.array([x]), ratio)[0]  # noqa: E731
    mass, _ = integrate.quad(density, lo, hi, limit=200)
    mean, _ = integrate.quad(lambda x: x * density(x), lo, hi, limit=200)
    below, _ = integrate.quad(density, lo, mp_median(ratio), limit=200)
    assert mass == pytest.approx(1.0, abs=1e-7)
    assert mean == pytest.approx(1.0, abs=1e-7)  # the MP law of W^T W / (s^2 N) has mean 1
    assert below == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("n_rows, m_cols", [(600, 600), (1200, 600), (2000, 400), (3000, 150)])
def test_bulk_edge_of_gaussian_matrices(n_rows, m_cols):
    s = 0.7
    rng = np.random.default_rng(n_rows + m_cols)
    values = gram_eigenvalues(s * rng.standard_normal((n_rows, m_cols)))
    fit = fit_marchenko_pastur(values, (n_rows, m_cols))
    q = n_rows / m_cols
    expected_edge = s**2 * n_rows * (1 + 1 / math.sqrt(q)) ** 2
    assert fit.bulk_edge == pytest.approx(expected_edge, rel=0.02)
    assert fit.scale == pytest.approx(s**2 * n_rows, rel=0.02)
    assert fit.num_spikes <= 2  # finite-size (Tracy-Widom) overshoot only
    assert fit.softrank == pytest.approx(fit.bulk_edge / values[-1])


def test_the_scale_is_a_plain_factor_so_normalize_n_moves_the_edge_with_it(rng):
    values = gram_eigenvalues(rng.standard_normal((500, 200)))
    raw, normalized = fit_marchenko_pastur(values, (500, 200)), fit_marchenko_pastur(values / 500, (500, 200))
    assert normalized.bulk_edge == pytest.approx(raw.bulk_edge / 500, rel=1e-12)
    assert normalized.num_spikes == raw.num_spikes


@pytest.mark.parametrize("k", [1, 3, 8])
def test_planted_strong_spikes_are_counted(k):
    n_rows, m_cols, s = 1500, 500, 1.0
    rng = np.random.default_rng(k)
    noise = s * rng.standard_normal((n_rows, m_cols))
    u, _ = np.linalg.qr(rng.standard_normal((n_rows, k)))
    v, _ = np.linalg.qr(rng.standard_normal((m_cols, k)))
    # signal singular values well above the BBP threshold s (N M)^(1/4)
    theta = s * (n_rows * m_cols) ** 0.25 * np.linspace(3.0, 5.0, k)
    values = gram_eigenvalues(noise + (u * theta) @ v.T)
    fit = fit_marchenko_pastur(values, (n_rows, m_cols))
    assert fit.num_spikes == k
    assert fit.bulk_edge == pytest.approx(s**2 * n_rows * (1 + math.sqrt(m_cols / n_rows)) ** 2, rel=0.03)
    assert fit.softrank < 1


def test_fit_refuses_a_bad_shape_or_spectrum():
    with pytest.raises(ValueError, match="N >= M"):
        fit_marchenko_pastur(np.ones(10), (5, 10))
    with pytest.raises(ValueError, match="positive lambda_max"):
        fit_marchenko_pastur(np.zeros(10), (10, 10))


def test_esd_distance_is_the_two_sample_ks_statistic(rng):
    a, b = rng.random(300), rng.random(200) + 0.3
    grid = np.concatenate([a, b])
    direct = np.max(np.abs((a[:, None] <= grid).mean(axis=0) - (b[:, None] <= grid).mean(axis=0)))
    assert esd_distance(a, b) == pytest.approx(direct)
    assert esd_distance(a, a) == 0.0
    assert esd_distance(a, a + 2.0) == 1.0


def test_large_entries_survive_shuffling_as_correlation_traps():
    from zooscope.analysis.metrics import random_matrix_metrics

    rng = np.random.default_rng(7)
    n_rows, m_cols = 400, 200
    w = rng.standard_normal((n_rows, m_cols))
    # three entries of size 60: wherever shuffling puts them (in distinct rows and columns, almost
    # surely), each carries an eigenvalue of about 60^2 + N = 4000, far above the bulk edge
    # N (1 + sqrt(M/N))^2 = 1166 of the unit-variance rest
    w[[10, 50, 90], [5, 60, 120]] = 60.0
    values = np.linalg.eigvalsh(w.T @ w)
    shuffled = rng.permutation(w.ravel()).reshape(w.shape)
    row = random_matrix_metrics(values, (n_rows, m_cols), np.linalg.eigvalsh(shuffled.T @ shuffled))
    assert row["num_traps"] == 3 and row["num_spikes"] == 3
    # the shuffled matrix keeps the bulk: the two ESDs are nearly the same
    assert row["rand_distance"] < 0.1
