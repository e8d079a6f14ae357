import math

import numpy as np
import pytest
from scipy import integrate, stats

from zooscope.fits.truncated import esd_peak, fit_exp_truncated_power_law, fit_truncated_power_law


def sample_tpl(rng, alpha, xmin, xmax, n):
    """Inverse-CDF sample of p(x) ~ x^-alpha on [xmin, xmax] (alpha != 1)."""
    a, b = xmin ** (1 - alpha), xmax ** (1 - alpha)
    return np.sort((a + rng.random(n) * (b - a)) ** (1 / (1 - alpha)))


def sample_etpl(rng, alpha, lam, xmin, n):
    """Rejection sample of p(x) ~ x^-alpha exp(-lam x), x >= xmin: Pareto proposals (alpha > 1)
    accepted with probability exp(-lam (x - xmin))."""
    out = np.empty(0)
    while out.size < n:
        x = xmin * rng.random(n) ** (-1 / (alpha - 1))
        out = np.concatenate([out, x[rng.random(n) < np.exp(-lam * (x - xmin))]])
    return np.sort(out[:n])


@pytest.mark.parametrize("alpha, xmax", [(2.5, 100.0), (1.5, 1e4), (4.0, 10.0), (0.5, 10.0)])
def test_tpl_recovers_alpha_within_three_standard_errors(alpha, xmax):
    rng = np.random.default_rng(int(alpha * 10))
    x = sample_tpl(rng, alpha, 1.0, xmax, 4000)
    fit = fit_truncated_power_law(x, xmin=1.0, xmax=xmax)
    assert abs(fit.alpha - alpha) < 3 * fit.sigma
    assert fit.sigma < 0.1 and fit.num_pl_spikes == 4000 and math.isnan(fit.truncation)
    # the one-sided KS convention of the pure fit lies within 1/n of scipy's two-sided statistic
    cdf = lambda v: (v ** (1 - fit.alpha) - 1) / (xmax ** (1 - fit.alpha) - 1)  # noqa: E731
    ks = stats.kstest(x, cdf).statistic
    assert ks - 1 / x.size - 1e-12 <= fit.D <= ks + 1e-12


def test_tpl_reduces_to_the_power_law_closed_form_as_xmax_grows(rng):
    x = 2.0 * rng.random(500) ** (-1 / 1.8)
    closed_form = 1 + x.size / np.sum(np.log(x / 2.0))
    assert fit_truncated_power_law(x, xmin=2.0, xmax=1e250).alpha == pytest.approx(closed_form, rel=1e-9)


def test_tpl_loglik_matches_a_numerically_normalised_density(rng):
    x = sample_tpl(rng, 2.2, 0.5, 40.0, 300)
    fit = fit_truncated_power_law(x, xmin=0.5, xmax=40.0)
    norm, _ = integrate.quad(lambda v: v ** -fit.alpha, 0.5, 40.0)
    assert fit.loglik == pytest.approx(np.sum(-fit.alpha * np.log(x)) - x.size * math.log(norm), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_etpl_recovers_alpha_and_lambda(seed):
    alpha, lam, xmin = 2.2, 0.05, 1.0
    x = sample_etpl(np.random.default_rng(seed), alpha, lam, xmin, 20000)
    fit = fit_exp_truncated_power_law(x, xmin=xmin)
    assert abs(fit.alpha - alpha) < 3 * fit.sigma
    assert fit.sigma < 0.05
    assert fit.truncation == pytest.approx(lam, rel=0.25)
    norm, _ = integrate.quad(lambda v: v ** -fit.alpha * math.exp(-fit.truncation * v), xmin, np.inf)
    expected = np.sum(-fit.alpha * np.log(x) - fit.truncation * x) - x.size * math.log(norm)
    assert fit.loglik == pytest.approx(expected, rel=1e-7)


def test_etpl_on_a_pure_power_law_finds_almost_no_truncation():
    x = 3.0 * np.random.default_rng(5).random(5000) ** (-1 / 1.5)  # alpha = 2.5
    fit = fit_exp_truncated_power_law(x, xmin=3.0)
    assert abs(fit.alpha - 2.5) < 3 * fit.sigma
    assert fit.truncation * x.max() < 1.0  # the cut-off lies beyond the data


def test_esd_peak_is_the_mode_of_log_eigenvalues():
    # log10 of the sample is normal(mean 0.5, sd 0.3): its mode is 10^0.5
    values = 10 ** np.random.default_rng(2).normal(0.5, 0.3, 20000)
    assert math.log10(esd_peak(values)) == pytest.approx(0.5, abs=0.03)
    fit = fit_exp_truncated_power_law(values)
    assert fit.xmin == esd_peak(values)
    assert fit.num_pl_spikes == np.count_nonzero(values >= fit.xmin)


def test_degenerate_tails_are_refused():
    with pytest.raises(ValueError, match="degenerate tail"):
        fit_truncated_power_law(np.array([1.0, 2.0, 3.0]), xmin=3.0)
    with pytest.raises(ValueError, match="degenerate spectrum"):
        esd_peak(np.full(10, 2.0))
    # a tail that only rises (uniform on [1, 2], no decay at all) has no interior etpl optimum
    with pytest.raises(ValueError, match="etpl fit failed: alpha ran to its search bound"):
        fit_exp_truncated_power_law(np.linspace(1.0, 2.0, 200) ** 0.05, xmin=1.0)
