"""The uncertainty of a tail fit (zooscope.fits.bootstrap, .goodness, .fingers), by simulation on
samples of known distribution, closed forms, and the reference package powerlaw 2.0.0."""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
from scipy import stats

from zooscope.fits.bootstrap import bootstrap_fit
from zooscope.fits.fingers import clip_fingers, finger_probability, peak_xmin_range
from zooscope.fits.goodness import compare_alternatives, likelihood_ratio, power_law_p_value
from zooscope.fits.powerlaw import PowerLawFit, fit_power_law


def pareto(rng, n, alpha, xmin=1.0):
    """Density ~ x^-alpha on [xmin, inf), by the inverse CDF."""
    return xmin * (1.0 - rng.random(n)) ** (-1.0 / (alpha - 1.0))


def truncated_lognormal(rng, n, mu, sigma, xmin):
    out = np.empty(0)
    while out.size < n:
        draw = rng.lognormal(mu, sigma, 4 * n)
        out = np.concatenate([out, draw[draw >= xmin]])
    return out[:n]


# -- bootstrap intervals -----------------------------------------------------------------------


def test_the_95_percent_interval_covers_the_true_alpha_in_90_to_99_percent_of_200_trials():
    alpha, covered = 2.5, 0
    for trial in range(200):
        x = pareto(np.random.default_rng([1, trial]), 100, alpha)
        ci = bootstrap_fit(x, resamples=100, level=0.95, seed=[2, trial])
        assert ci.alpha_lo < ci.alpha_hi and ci.xmin_lo <= ci.xmin_hi and ci.resamples == 100
        covered += ci.alpha_lo <= alpha <= ci.alpha_hi
    assert 0.90 <= covered / 200 <= 0.99


def test_interval_is_the_percentile_of_refits_and_is_seeded():
    x = pareto(np.random.default_rng(3), 300, 3.0)
    ci = bootstrap_fit(x, resamples=50, level=0.8, seed=7)
    # the same resamples by hand: rows of sorted indices, each refitted with the full search
    index = np.sort(np.random.default_rng(7).integers(0, x.size, size=(50, x.size)), axis=1)
    alphas = [fit_power_law(np.sort(x)[row]).alpha for row in index]
    np.testing.assert_allclose(ci.alphas, alphas, rtol=1e-12)
    assert (ci.alpha_lo, ci.alpha_hi) == pytest.approx(tuple(np.quantile(alphas, [0.1, 0.9])), rel=1e-12)
    again = bootstrap_fit(x, resamples=50, level=0.8, seed=7)
    assert (again.alpha_lo, again.alpha_hi, again.xmin_lo, again.xmin_hi) == (ci.alpha_lo, ci.alpha_hi, ci.xmin_lo,
                                                                            ci.xmin_hi)
    assert bootstrap_fit(x, resamples=50, level=0.8, seed=8).alpha_lo != ci.alpha_lo


def test_interval_width_shrinks_like_one_over_sqrt_n():
    # the MLE's standard error is (alpha - 1) / sqrt(n): 16x the sample, about 1/4 the width
    width = {}
    for n in (250, 4000):
        x = pareto(np.random.default_rng(n), n, 3.0)
        ci = bootstrap_fit(x, resamples=200, seed=n)
        width[n] = ci.alpha_hi - ci.alpha_lo
    assert 0.15 < width[4000] / width[250] < 0.45


def test_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="resamples must be at least 1"):
        bootstrap_fit([1.0, 2.0, 3.0], resamples=0)
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
        bootstrap_fit([1.0, 2.0, 3.0], level=1.0)


# -- goodness of fit ---------------------------------------------------------------------------


def p_values(generate, trials, *, known_xmin, resamples=40, n=500):
    out = []
    for trial in range(trials):
        x = generate(np.random.default_rng([4, trial]), n)
        xmin_range = (x.min(), x.min()) if known_xmin else None
        fit = fit_power_law(x, xmin_range=xmin_range)
        out.append(power_law_p_value(x, fit, resamples=resamples, seed=[5, trial], xmin_range=xmin_range).p_value)
    return np.array(out)


def test_p_value_is_roughly_uniform_on_pareto_samples_with_the_full_xmin_search():
    p = p_values(lambda rng, n: pareto(rng, n, 2.5), 60, known_xmin=False, n=300)
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert np.mean(p < 0.1) < 0.2


def test_p_value_rejects_exponential_and_lognormal_samples_and_not_pareto_ones():
    # CSN 2009, section 4.2: an exponential and a log-normal above xmin = 15, against a Pareto
    # sample of the same size, the power law's xmin known (a free xmin search moves into the far
    # tail of any distribution, where it looks like a power law: docs/statistics.md)
    exponential = p_values(lambda rng, n: 15.0 + rng.exponential(8.0, n), 30, known_xmin=True)
    lognormal = p_values(lambda rng, n: truncated_lognormal(rng, n, 0.3, 2.0, 15.0), 30, known_xmin=True)
    power = p_values(lambda rng, n: pareto(rng, n, 2.5, 15.0), 30, known_xmin=True)
    assert np.mean(exponential < 0.05) > 0.9
    assert np.mean(lognormal < 0.05) > 0.5
    assert np.mean(power < 0.05) < 0.15 and stats.kstest(power, "uniform").pvalue > 0.01


# -- likelihood ratios -------------------------------------------------------------------------


def test_likelihood_ratio_closed_forms():
    ll_pl, ll_alt = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.5, 0.0, 1.0, 1.5])
    diff = ll_pl - ll_alt  # -0.5, 1, 1, 1.5: sum 3, population sd sqrt(0.546875)
    test = likelihood_ratio(ll_pl, ll_alt, alternative="x")
    assert test.loglik_ratio == 3.0
    assert test.R == pytest.approx(3.0 / (2.0 * diff.std()))
    assert test.p == pytest.approx(2.0 * stats.norm.sf(test.R))
    nested = likelihood_ratio(ll_pl, ll_alt, alternative="x", nested=True)
    assert nested.p == pytest.approx(stats.chi2.sf(6.0, 1))
    same = likelihood_ratio(ll_pl, ll_pl, alternative="x")
    assert (same.R, same.p) == (0.0, 1.0)


def powerlaw_compare(x, xmin):
    """powerlaw 2.0.0's distribution_compare at a given xmin: (R, p) per alternative, and its
    power-law and truncated-power-law alphas (its fits are bounded to alpha in [0, 3])."""
    import powerlaw

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = powerlaw.Fit(x, xmin=xmin)
        out = {name: reference.distribution_compare("power_law", other, normalized_ratio=True)
               for name, other in (("exp", "exponential"), ("lognormal", "lognormal"),
                                   ("etpl", "truncated_power_law"))}
        return out, reference.power_law.alpha, reference.truncated_power_law.alpha


@pytest.mark.parametrize("name, sample, xmin, expected_sign", [
    ("pareto", lambda rng: pareto(rng, 2000, 2.5), 1.0, {"exp": 1}),
    ("lognormal", lambda rng: rng.lognormal(0.0, 1.0, 3000), 1.0, {"lognormal": -1}),
    ("exponential", lambda rng: rng.exponential(1.0, 3000), 0.3, {"exp": -1, "lognormal": -1}),
])
def test_likelihood_ratios_agree_with_powerlaw_where_its_fit_is_valid(name, sample, xmin, expected_sign):
    x = sample(np.random.default_rng(11))
    xmin = float(np.min(x[x >= xmin]))  # an observed value: the candidate the fit then pins
    fit = fit_power_law(x, xmin_range=(xmin, xmin))
    assert fit.xmin == xmin
    ours = compare_alternatives(x, fit)
    reference, ref_alpha, ref_tpl_alpha = powerlaw_compare(x, xmin)
    assert ref_alpha == pytest.approx(fit.alpha, rel=1e-6)  # inside powerlaw's bound: its fit is right
    for alternative, (R, p) in reference.items():
        if alternative == "etpl" and not 1e-3 < ref_tpl_alpha < 3.0 - 1e-3:
            continue  # powerlaw's truncated power law ran into its alpha bound
        assert np.sign(ours[alternative].R) == np.sign(R), alternative
        assert ours[alternative].R == pytest.approx(R, abs=0.02), alternative
        assert ours[alternative].p == pytest.approx(p, abs=0.01), alternative
    for alternative, sign in expected_sign.items():  # and the known truth, significantly
        assert np.sign(ours[alternative].R) == sign and ours[alternative].p < 0.05, alternative
    assert ours["etpl"].R <= 0.0  # the power law is nested in etpl: it can never fit better


# -- fingers -----------------------------------------------------------------------------------


def test_finger_probability_closed_form():
    fit = PowerLawFit(alpha=3.0, xmin=1.0, xmax=10.0, D=0.0, sigma=0.0, num_pl_spikes=100)
    assert finger_probability(fit) == pytest.approx(1.0 - 0.99**100)


def test_clipped_fit_recovers_the_planted_exponent_within_its_interval():
    alpha, covered, biased = 3.0, 0, 0
    for trial in range(20):
        x = np.sort(pareto(np.random.default_rng([7, trial]), 1000, alpha))
        fingers = np.concatenate([x, x[-1] * np.array([20.0, 40.0, 80.0])])  # three planted fingers
        clipped = clip_fingers(np.sort(fingers))
        assert clipped.num_clipped >= 2 and clipped.values.size == fingers.size - clipped.num_clipped
        ci = bootstrap_fit(clipped.values, resamples=100, seed=trial)
        covered += ci.alpha_lo <= alpha <= ci.alpha_hi
        biased += fit_power_law(fingers).alpha < clipped.fit.alpha
    assert covered >= 17  # the 95% interval, in 20 trials
    assert biased >= 18  # the fingers pull the unclipped alpha down


def test_a_clean_power_law_keeps_its_largest_values():
    clipped = [clip_fingers(np.sort(pareto(np.random.default_rng([8, trial]), 500, 2.5))).num_clipped
               for trial in range(100)]
    assert sum(c > 0 for c in clipped) <= 5  # FINGER_P = 1 % false clips per layer


def test_xmin_peak_searches_xmin_near_the_esd_peak():
    rng = np.random.default_rng(9)
    # a log-normal bulk peaking near 1 and a Pareto tail from 3: the search alone picks ~3
    values = np.concatenate([rng.lognormal(0.0, 0.3, 3000), pareto(rng, 300, 2.5, 3.0)])
    lo, hi = peak_xmin_range(values)
    log_values = np.log10(values)
    grid = np.linspace(log_values.min(), log_values.max(), 512)
    peak = 10 ** grid[np.argmax(stats.gaussian_kde(log_values)(grid))]
    assert (lo, hi) == pytest.approx((0.95 * peak, 1.05 * peak))
    fit = fit_power_law(values, xmin_range=(lo, hi))
    assert lo <= fit.xmin <= hi
    inside = np.sort(values[(values >= lo) & (values <= hi)])
    assert fit.xmin in inside
    assert fit_power_law(values).xmin > 2.0
