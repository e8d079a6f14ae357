"""Goodness of fit of the power law and likelihood-ratio tests against alternatives (Clauset,
Shalizi & Newman 2009, sections 4 and 5).

* :func:`power_law_p_value`: the semi-parametric bootstrap. Each synthetic sample has the
  observed size K; each value is, with probability n/K (n the fitted tail's size), a draw of the
  fitted power law above xmin, otherwise a value drawn with replacement from the observed ones
  below xmin. Each synthetic sample is refitted with the full xmin search (as the data were), and
  p is the share of synthetic KS distances at least the observed one. A small p (CSN: p < 0.1)
  rules the power law out; a large one does not prove it.
* :func:`compare_alternatives`: Vuong's test on the fitted tail (x >= xmin) of the power law
  against the exponential, the log-normal (both normalised on [xmin, inf), as in CSN and
  ``powerlaw``) and the power law with exponential cutoff (``etpl``, fitted at the same xmin). R is
  the log-likelihood ratio sum_i [ln p_pl(x_i) - ln p_alt(x_i)] normalised by sqrt(n) times the
  standard deviation of its terms: R > 0 favours the power law. Its p-value is that of the sign:
  erfc(|R| / sqrt(2)) for non-nested pairs; the power law is nested in ``etpl`` (cutoff 0), so
  that pair uses Wilks' chi-square with one degree of freedom on twice the raw ratio, as
  ``powerlaw.Fit.distribution_compare`` does.

Everything here is numpy and the math module: a fit job needs no scipy (0.22 s of imports).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zooscope.config import FitSettings
from zooscope.fits.newton import minimize_box
from zooscope.fits.powerlaw import PowerLawFit, fit_sorted_rows

__all__ = ["GoodnessOfFit", "LikelihoodRatio", "ALTERNATIVES", "power_law_p_value", "synthetic_samples",
           "likelihood_ratio", "compare_alternatives", "fit_exponential", "fit_lognormal"]

#: The alternatives of :func:`compare_alternatives`, in column order.
ALTERNATIVES = ("exp", "lognormal", "etpl")
#: Bound of the log-normal fit's mu and sigma, in standard deviations of ln x (fit_lognormal).
LOGNORMAL_SPAN = 1e3
#: CSN's threshold: a p-value below it rules the power law out.
REJECT_BELOW = 0.1
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class GoodnessOfFit:
    """Result of :func:`power_law_p_value`.

    p_value: share of synthetic samples whose refitted KS distance is >= the observed D.
    D: the observed KS distance.
    resamples: number of synthetic samples that could be refitted.
    """

    p_value: float
    D: float
    resamples: int


@dataclass(frozen=True)
class LikelihoodRatio:
    """Vuong's test of the power law against one alternative (:func:`likelihood_ratio`).

    alternative: "exp", "lognormal" or "etpl".
    R: normalised log-likelihood ratio (> 0 favours the power law).
    p: p-value of the sign of R (small: the sign is significant).
    loglik_ratio: the raw ratio sum_i ln p_pl(x_i) - ln p_alt(x_i).
    nested: whether the power law is a special case of the alternative (then p is Wilks').
    """

    alternative: str
    R: float
    p: float
    loglik_ratio: float
    nested: bool


def synthetic_samples(x: np.ndarray, fit: PowerLawFit, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples x K) semi-parametric synthetic samples of the sorted values ``x``, rows sorted."""
    K = x.size
    below = x[x < fit.xmin]
    in_tail = rng.random((resamples, K)) < fit.num_pl_spikes / K
    u = rng.random((resamples, K))
    samples = fit.xmin * (1.0 - u) ** (-1.0 / (fit.alpha - 1.0))  # inverse CDF of the fitted power law
    if below.size:  # else xmin is the smallest value and the whole sample is the power law
        np.copyto(samples, below[rng.integers(0, below.size, size=(resamples, K))], where=~in_tail)
    samples.sort(axis=1)
    return samples


def power_law_p_value(tail_values, fit: PowerLawFit, *, resamples: int = FitSettings.gof, seed=0,
                      xmin_range: tuple[float, float] | None = None) -> GoodnessOfFit:
    """CSN's semi-parametric bootstrap p-value of the power-law hypothesis.

    ``tail_values``: the values the fit used (every eigenvalue above the floor, after any clipped
    fingers), ``fit`` their fit; ``xmin_range`` the fit's candidate range, used by every refit.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    x = np.sort(np.asarray(tail_values, dtype=np.float64))
    distances = fit_sorted_rows(synthetic_samples(x, fit, resamples, np.random.default_rng(seed)), xmin_range).D
    distances = distances[np.isfinite(distances)]  # a degenerate sample (all values equal): no fit, not counted
    p = float(np.mean(distances >= fit.D)) if distances.size else math.nan
    return GoodnessOfFit(p_value=p, D=fit.D, resamples=int(distances.size))


def likelihood_ratio(loglik_pl: np.ndarray, loglik_alt: np.ndarray, *, alternative: str,
                     nested: bool = False) -> LikelihoodRatio:
    """Vuong's normalised log-likelihood ratio of pointwise log-likelihoods (power law first)."""
    diff = np.asarray(loglik_pl, dtype=np.float64) - np.asarray(loglik_alt, dtype=np.float64)
    n = diff.size
    raw = float(diff.sum())
    sd = float(np.sqrt(np.mean((diff - diff.mean()) ** 2)))
    if n == 0 or sd == 0.0:  # identical models on this tail: no preference
        return LikelihoodRatio(alternative, 0.0, 1.0, raw, nested)
    R = raw / (math.sqrt(n) * sd)
    # Wilks: chi2(1) survival of 2|raw| is erfc(sqrt(|raw|)); Vuong: two-sided normal of R
    p = math.erfc(math.sqrt(abs(raw))) if nested else math.erfc(abs(R) / math.sqrt(2.0))
    return LikelihoodRatio(alternative, R, p, raw, nested)


def power_law_logpdf(tail: np.ndarray, alpha: float, xmin: float) -> np.ndarray:
    """ln of (alpha - 1)/xmin (x/xmin)^-alpha."""
    return math.log(alpha - 1.0) - math.log(xmin) - alpha * np.log(tail / xmin)


def fit_exponential(tail: np.ndarray, xmin: float) -> np.ndarray:
    """Pointwise log-likelihood of the MLE exponential on [xmin, inf): lambda = 1/mean(x - xmin)."""
    excess = tail - xmin
    rate = 1.0 / float(excess.mean())
    return math.log(rate) - rate * excess


def fit_lognormal(tail: np.ndarray, xmin: float) -> np.ndarray:
    """Pointwise log-likelihood of the MLE log-normal normalised on [xmin, inf).

    ln p(x) = -ln x - ln(sigma sqrt(2 pi)) - (ln x - mu)^2 / (2 sigma^2) - ln Phi((mu - ln xmin)/sigma),
    maximised over (mu, ln sigma) by projected Newton with the analytic gradient and Hessian
    (zooscope.fits.newton), from the moments of ln x and from a lower mu. The total needs only the
    sums of ln x and (ln x)^2 (O(1) per step). On a tail close to a power law the optimum runs off
    to mu -> -inf, sigma -> inf, where the log-normal tends to the power law; mu and ln sigma are
    bounded at LOGNORMAL_SPAN scales of ln x from the data, where the likelihood has long stopped
    changing, so that such a fit ends.
    """
    logs = np.log(tail)
    n, log_xmin = logs.size, math.log(xmin)
    s1, s2 = float(logs.sum()), float(np.square(logs).sum())
    mean, sd = s1 / n, math.sqrt(max(s2 / n - (s1 / n) ** 2, 0.0)) or 1.0

    def terms(mu, log_sigma):  # the nll without the constant sum ln x + n ln sqrt(2 pi); its derivatives
        sigma = math.exp(log_sigma)
        z = (mu - log_xmin) / sigma
        quadratic = (s2 - 2.0 * mu * s1 + n * mu * mu) / (sigma * sigma)
        log_cdf = log_ndtr(z)
        hazard = math.exp(-0.5 * z * z - _LOG_SQRT_2PI - log_cdf)  # phi(z) / Phi(z): d ln Phi / dz
        slope = -hazard * (z + hazard)  # d hazard / dz
        value = n * log_sigma + quadratic / 2.0 + n * log_cdf
        gradient = ((n * mu - s1) / (sigma * sigma) + n * hazard / sigma, n - quadratic - n * hazard * z)
        hessian = (n * (1.0 + slope) / (sigma * sigma),
                   -2.0 * (n * mu - s1) / (sigma * sigma) - n * (z * slope + hazard) / sigma,
                   2.0 * quadratic + n * z * (z * slope + hazard))
        return value, gradient, hessian

    bounds = [(log_xmin - LOGNORMAL_SPAN * sd, mean + LOGNORMAL_SPAN * sd),
              (math.log(sd) - math.log(LOGNORMAL_SPAN), math.log(sd) + math.log(LOGNORMAL_SPAN))]
    best = min((minimize_box(terms, start, bounds) for start in
                ((mean, math.log(sd)), (log_xmin - 2.0 * sd, math.log(2.0 * sd)))), key=lambda result: result.fun)
    mu, sigma = float(best.x[0]), math.exp(float(best.x[1]))
    return (-logs - math.log(sigma) - _LOG_SQRT_2PI - (logs - mu) ** 2 / (2.0 * sigma**2)
            - log_ndtr((mu - log_xmin) / sigma))


def log_ndtr(z: float) -> float:
    """ln Phi(z), the log of the standard normal CDF, to about 1e-15 relative at every z.

    ln(erfc(-z / sqrt 2) / 2) where erfc neither rounds to 1 nor underflows (z down to -37);
    below, the asymptotic series ln Phi(z) = -z^2/2 - ln(-z sqrt(2 pi)) + ln(1 - 1/z^2 + 3/z^4
    - ...), whose terms there fall below 1e-16 within a dozen; above 0, log1p of the upper tail.
    (scipy.special.log_ndtr does the same; this keeps scipy out of the fit jobs.)
    """
    if z > 0.0:
        return math.log1p(-0.5 * math.erfc(z / math.sqrt(2.0)))
    if z > -37.0:
        return math.log(0.5 * math.erfc(-z / math.sqrt(2.0)))
    inverse_square, term, series = 1.0 / (z * z), 1.0, 1.0
    for k in range(1, 20):
        term *= -(2 * k - 1) * inverse_square
        series += term
        if abs(term) < 1e-17:
            break
    return -0.5 * z * z - math.log(-z) - _LOG_SQRT_2PI + math.log(series)


def compare_alternatives(tail_values, fit: PowerLawFit) -> dict[str, LikelihoodRatio]:
    """Vuong's test of the power law ``fit`` against each of :data:`ALTERNATIVES`, on the tail
    x >= fit.xmin of ``tail_values``."""
    from zooscope.fits.truncated import etpl_logpdf, fit_exp_truncated_power_law

    x = np.sort(np.asarray(tail_values, dtype=np.float64))
    tail = x[x >= fit.xmin]
    pl = power_law_logpdf(tail, fit.alpha, fit.xmin)
    out = {
        "exp": likelihood_ratio(pl, fit_exponential(tail, fit.xmin), alternative="exp"),
        "lognormal": likelihood_ratio(pl, fit_lognormal(tail, fit.xmin), alternative="lognormal"),
    }
    try:
        etpl = fit_exp_truncated_power_law(tail, xmin=fit.xmin, floor=0.0)
        out["etpl"] = likelihood_ratio(pl, etpl_logpdf(tail, etpl.alpha, etpl.truncation, fit.xmin),
                                       alternative="etpl", nested=True)
    except ValueError:  # no interior etpl optimum on this tail: no test
        out["etpl"] = LikelihoodRatio("etpl", math.nan, math.nan, math.nan, True)
    return out
