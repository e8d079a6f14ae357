"""Truncated power-law fits of an ESD tail (config ``fit.kind``: ``tpl`` and ``etpl``).

The paper notes that layer ESDs are often better described by a truncated power law than by a
pure one (Martin, Peng & Mahoney 2021; docs/fit.md). Two truncations, both fitted by maximum likelihood:

* ``tpl``: rho(x) ~ x^-alpha on [xmin, xmax], normalised on that interval. xmin is the pure
  power-law fit's xmin (:func:`zooscope.fits.powerlaw.fit_power_law`, the KS-optimal start of
  the tail) and xmax = lambda_max, so ``tpl`` refits alpha on the same tail with the finite
  support taken into account. With u = ln(x / xmin) in [0, r], r = ln(xmax / xmin), the
  density of u is proportional to exp(-(alpha - 1) u): a truncated exponential, whose mean
  1/b - r/(e^(b r) - 1) (b = alpha - 1) decreases monotonically from r to 0 as b goes from
  -inf to inf. The MLE solves mean = the sample mean of u, one root (brentq). As r -> inf
  it becomes 1/b, the pure power law's closed form alpha = 1 + n / sum ln(x / xmin).
* ``etpl``: rho(x) ~ x^-alpha exp(-lambda x) for x >= xmin, with xmin at the ESD's peak
  (:func:`esd_peak`). (alpha, lambda) maximise the likelihood; the normaliser
  int_xmin^inf x^-alpha e^(-lambda x) dx is computed by quadrature (the closed form,
  mu^(alpha-1) Gamma(1-alpha, mu) with mu = lambda xmin, needs the incomplete gamma of a
  negative argument for alpha > 1, which scipy does not provide; :func:`_log_etpl_norm`).

The KS distance D uses the same convention as the pure fit (docs/fit.md): with the tail sorted,
D = max_k |F(x_k) - k/n| for the model CDF F. ``loglik`` is the tail's total log-likelihood.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zooscope.config import FitSettings
from zooscope.fits.newton import minimize_box

# scipy is imported in the functions that use it: a fit or summarize job with `fit: pl` never
# pays its import (about a second per job).

__all__ = ["TailFit", "fit_truncated_power_law", "fit_exp_truncated_power_law", "power_law_loglik", "esd_peak",
           "etpl_logpdf"]

FIT_KINDS = ("pl", "tpl", "etpl")
_PEAK_GRID = 512  # points of the kernel density estimate of log10 eigenvalues
_CDF_GRID = 8193  # log-spaced nodes of the etpl CDF
_ALPHA_BOUNDS = (-20.0, 50.0)  # the etpl search range of alpha
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)  # per panel of the etpl normaliser
_PANEL, _FIRST_PANEL = 0.25, 1e-4


@dataclass(frozen=True)
class TailFit:
    """A fitted tail model (the columns of layers.tsv that describe the fit).

    kind: "pl", "tpl" or "etpl".
    alpha: the exponent, rho(x) ~ x^-alpha (times exp(-truncation x) for etpl).
    xmin, xmax: the tail's range (xmax = lambda_max).
    D: KS distance between the tail and the model.
    sigma: standard error of alpha (inverse Fisher information).
    num_pl_spikes: number of eigenvalues in the tail.
    truncation: lambda of etpl (per unit eigenvalue); NaN for pl and tpl.
    loglik: log-likelihood of the tail under the model.
    """

    kind: str
    alpha: float
    xmin: float
    xmax: float
    D: float
    sigma: float
    num_pl_spikes: int
    truncation: float
    loglik: float


def _ks(cdf_at_sorted: np.ndarray) -> float:
    n = cdf_at_sorted.size
    return float(np.max(np.abs(cdf_at_sorted - np.arange(n) / n)))


def power_law_loglik(tail, alpha: float, xmin: float) -> float:
    """Log-likelihood of ``tail`` under rho(x) = (alpha - 1)/xmin (x/xmin)^-alpha, x >= xmin."""
    logs = np.log(np.asarray(tail, dtype=np.float64) / xmin)
    return float(logs.size * (math.log(alpha - 1.0) - math.log(xmin)) - alpha * logs.sum())


def _tail(eigenvalues, xmin: float, xmax: float = math.inf) -> np.ndarray:
    x = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    x = x[(x >= xmin) & (x <= xmax)]
    if x.size < 2 or x[-1] <= x[0]:
        raise ValueError(f"degenerate tail: fewer than 2 distinct eigenvalues in [{xmin:g}, {xmax:g}]")
    return x


# -- tpl ---------------------------------------------------------------------------------------

def _trunc_exp_mean(b: float, r: float) -> float:
    """Mean of u on [0, r] with density ~ exp(-b u)."""
    if abs(b * r) < 1e-6:  # series: r/2 - b r^2/12, avoids 1/b - r/(e^(br)-1) cancelling
        return r / 2.0 - b * r * r / 12.0
    return 1.0 / b - r / math.expm1(b * r) if b * r < 700 else 1.0 / b


def _trunc_exp_var(b: float, r: float) -> float:
    """Variance of u on [0, r] with density ~ exp(-b u) (the Fisher information per point)."""
    if abs(b * r) < 1e-6:
        return r * r / 12.0
    if b * r > 700:
        return 1.0 / (b * b)
    # r^2 e^(br) / (e^(br) - 1)^2 written as r^2 / (4 sinh^2(br/2)), stable for either sign
    return 1.0 / (b * b) - r * r / (4.0 * math.sinh(b * r / 2.0) ** 2)


def fit_truncated_power_law(eigenvalues, *, xmin: float, xmax: float | None = None) -> TailFit:
    """MLE of alpha for rho(x) ~ x^-alpha on [xmin, xmax] from the eigenvalues in that range.

    ``xmax`` defaults to the largest eigenvalue. See the module docstring for the equation.
    """
    x = _tail(eigenvalues, xmin, math.inf if xmax is None else xmax)
    xmax = float(x[-1]) if xmax is None else float(xmax)
    n = x.size
    u = np.log(x / xmin)
    r = math.log(xmax / xmin)
    target = float(u.mean())
    # E[u](b) runs from r (b -> -inf) to 0 (b -> inf); bracket the root by doubling.
    lo, hi = -1.0, 1.0
    while _trunc_exp_mean(lo, r) < target:
        lo *= 2.0
    while _trunc_exp_mean(hi, r) > target:
        hi *= 2.0
    from scipy import optimize

    b = optimize.brentq(lambda b: _trunc_exp_mean(b, r) - target, lo, hi, xtol=1e-14, rtol=1e-13)
    if abs(b * r) < 1e-12:
        cdf = u / r
        log_norm = math.log(r)
    else:
        cdf = np.expm1(-b * u) / math.expm1(-b * r)
        log_norm = math.log(-math.expm1(-b * r) / b)
    # density of x: e^(-b u) / (x * Z_u) with Z_u = (1 - e^(-b r)) / b, so
    # loglik = -b sum u - sum ln x - n ln Z_u
    loglik = float(-b * u.sum() - np.log(x).sum() - n * log_norm)
    return TailFit(
        kind="tpl",
        alpha=1.0 + b,
        xmin=float(xmin),
        xmax=xmax,
        D=_ks(cdf),
        sigma=1.0 / math.sqrt(n * _trunc_exp_var(b, r)),
        num_pl_spikes=int(n),
        truncation=math.nan,
        loglik=loglik,
    )


# -- etpl --------------------------------------------------------------------------------------

def esd_peak(eigenvalues, *, floor: float = FitSettings.floor) -> float:
    """The ESD's peak: the mode of a Gaussian kernel density estimate of log10(eigenvalues).

    Only eigenvalues above ``floor``; bandwidth by Scott's rule (scipy.stats.gaussian_kde),
    evaluated on 512 points spanning the data. Log scale because ESDs span decades; a KDE
    rather than a histogram so the peak does not depend on a choice of bins.
    """
    values = np.asarray(eigenvalues, dtype=np.float64)
    logs = np.log10(values[values > floor])
    if logs.size < 2 or logs.max() == logs.min():
        raise ValueError("degenerate spectrum: the ESD peak needs at least 2 distinct eigenvalues above the floor")
    grid = np.linspace(logs.min(), logs.max(), _PEAK_GRID)
    from scipy import stats

    return float(10.0 ** grid[np.argmax(stats.gaussian_kde(logs)(grid))])


def _log_etpl_norm(alpha: float, mu: float) -> float:
    """ln int_1^inf t^-alpha e^(-mu t) dt (the normaliser in units of xmin); inf if divergent.

    In v = ln t the integrand exp((1 - alpha) v - mu e^v) is smooth and log-concave: composite
    Gauss-Legendre (16 nodes per panel) on [0, v_hi], beyond which mu e^v exceeds |1 - alpha| + 60
    and the integrand is below e^-60 of its peak. Panels are 0.25 wide, and geometrically finer
    towards v = 0 where a large alpha or mu makes it steep. It agrees with mpmath's expint(alpha,
    mu) (the same integral) to 1e-10 over alpha in [-20, 50] and mu in [1e-12, 1e5], in about
    0.1 ms, where scipy's adaptive quad took up to ms per call and failed at small mu.
    """
    if mu <= 0.0:
        return -math.log(alpha - 1.0) if alpha > 1.0 else math.inf
    return _etpl_quadrature(alpha, mu)[0]


def _etpl_quadrature(alpha: float, mu: float):
    """ln Z of :func:`_log_etpl_norm` (mu > 0) and the quadrature's normalised masses at its nodes
    v (and t = e^v): the integrand's distribution, whose moments give ln Z's derivatives."""
    v_hi = max(math.log((abs(1.0 - alpha) + 60.0) / mu), 0.0) + 1.0
    fine = _FIRST_PANEL * 2.0 ** np.arange(40)
    edges = np.unique(np.concatenate([[0.0, v_hi], fine[fine < v_hi], np.arange(0.0, v_hi, _PANEL)]))
    middle, half = (edges[1:] + edges[:-1]) / 2.0, (edges[1:] - edges[:-1]) / 2.0
    v = (middle[:, None] + half[:, None] * _GL_NODES[None, :]).ravel()
    t = np.exp(v)
    log_integrand = (1.0 - alpha) * v - mu * t
    peak = float(log_integrand.max())
    mass = (half[:, None] * _GL_WEIGHTS[None, :]).ravel() * np.exp(log_integrand - peak)
    total = float(np.sum(mass))
    return peak + math.log(total), mass / total, v, t


def _etpl_nll(params, mean_log_t: float, mean_t: float) -> float:
    """Negative log-likelihood per point (without the constant ln xmin), t = x / xmin."""
    alpha, mu = params
    log_norm = _log_etpl_norm(alpha, mu)
    if not math.isfinite(log_norm):
        return 1e300
    return alpha * mean_log_t + mu * mean_t + log_norm


def _etpl_terms(alpha: float, mu: float, mean_log_t: float, mean_t: float):
    """The per-point negative log-likelihood at (alpha, mu > 0), its gradient and its Hessian.

    ln Z is the log-partition function of an exponential family with statistics (-ln t, -t), so
    its gradient is -(E[v], E[t]) and its Hessian the covariance of (v, t) under the model: the
    likelihood is concave in (alpha, mu), with a single optimum.
    """
    log_norm, mass, v, t = _etpl_quadrature(alpha, mu)
    mean_v, model_t = float(mass @ v), float(mass @ t)
    dv, dt = v - mean_v, t - model_t
    hessian = np.array([[mass @ (dv * dv), mass @ (dv * dt)], [mass @ (dv * dt), mass @ (dt * dt)]])
    value = alpha * mean_log_t + mu * mean_t + log_norm
    return value, np.array([mean_log_t - mean_v, mean_t - model_t]), hessian


def _etpl_mle(mean_log_t: float, mean_t: float) -> tuple[float, float]:
    """(alpha, mu) maximising the etpl likelihood of a tail with these means of ln t and t.

    The likelihood is concave (:func:`_etpl_terms`), so the optimum is at mu = 0 exactly when the
    pure power law's alpha = 1 + 1/mean(ln t) has d(nll)/d(mu) >= 0 there (E[t] = b/(b - 1) with
    b = alpha - 1, finite only for b > 1). Otherwise it is interior, found by projected Newton
    (zooscope.fits.newton) with the analytic gradient and Hessian, from that alpha and
    mu = 1/mean(t); mu is kept above 1e-12/mean(t), where the quadrature still holds.
    """
    b = 1.0 / mean_log_t
    if b > 1.0 and mean_t - b / (b - 1.0) >= 0.0:
        return 1.0 + b, 0.0

    def terms(alpha, mu):
        value, gradient, hessian = _etpl_terms(alpha, mu, mean_log_t, mean_t)
        return value, (float(gradient[0]), float(gradient[1])), (float(hessian[0, 0]), float(hessian[0, 1]),
                                                                 float(hessian[1, 1]))

    return minimize_box(terms, (1.0 + b, 1.0 / mean_t), (_ALPHA_BOUNDS, (1e-12 / mean_t, math.inf))).x


def fit_exp_truncated_power_law(eigenvalues, *, floor: float = FitSettings.floor, xmin: float | None = None) -> TailFit:
    """MLE of (alpha, lambda) for rho(x) ~ x^-alpha e^(-lambda x), x >= xmin, lambda >= 0.

    ``xmin`` defaults to :func:`esd_peak`. The fit runs in t = x / xmin with mu = lambda xmin
    (dimensionless, so the optimiser sees the same problem at every eigenvalue scale), by
    :func:`_etpl_mle` (the concave likelihood's optimum, by projected Newton, analytic derivatives).
    alpha is searched in [-20, 50]; an optimum on that bound is an error (no interior fit).
    ``sigma`` is alpha's standard error from the inverse of the Fisher information (for this
    exponential family equal to the observed information: n times the covariance of (ln t, t)).
    """
    values = np.asarray(eigenvalues, dtype=np.float64)
    if xmin is None:
        xmin = esd_peak(values, floor=floor)
    x = _tail(values[values > floor], xmin)
    n = x.size
    t = x / xmin
    mean_log_t, mean_t = float(np.log(t).mean()), float(t.mean())
    alpha, mu = _etpl_mle(mean_log_t, mean_t)
    if not _ALPHA_BOUNDS[0] + 1e-6 < alpha < _ALPHA_BOUNDS[1] - 1e-6:
        raise ValueError(
            f"etpl fit failed: alpha ran to its search bound {alpha:g} on a tail of {n} eigenvalues from "
            f"xmin={xmin:.4g}, so the tail is not a truncated power law; use fit.kind pl or tpl"
        )
    if mu > 0:
        hessian = n * _etpl_terms(alpha, mu, mean_log_t, mean_t)[2]
        determinant = float(np.linalg.det(hessian))
        variance = float(hessian[1, 1] / determinant) if determinant > 0 else math.nan
    else:  # no truncation at the optimum: the pure power law's standard error
        variance = (alpha - 1.0) ** 2 / n
    return TailFit(
        kind="etpl",
        alpha=alpha,
        xmin=float(xmin),
        xmax=float(x[-1]),
        D=_ks(_etpl_cdf(t, alpha, mu)),
        sigma=math.sqrt(variance) if variance > 0 else math.nan,
        num_pl_spikes=int(n),
        truncation=mu / xmin,
        loglik=float(-n * (_etpl_nll((alpha, mu), mean_log_t, mean_t) + math.log(xmin))),
    )


def etpl_logpdf(x, alpha: float, truncation: float, xmin: float) -> np.ndarray:
    """Pointwise ln rho(x) of the etpl density x^-alpha e^(-truncation x) normalised on [xmin, inf)."""
    t = np.asarray(x, dtype=np.float64) / xmin
    mu = truncation * xmin
    return -alpha * np.log(t) - mu * t - _log_etpl_norm(alpha, mu) - math.log(xmin)


def _etpl_cdf(t_sorted: np.ndarray, alpha: float, mu: float) -> np.ndarray:
    """The etpl CDF at sorted points t >= 1: cumulative trapezoid in v = ln t, where the
    integrand exp((1 - alpha) v - mu e^v) is smooth, over the exact total mass."""
    v = np.linspace(0.0, math.log(t_sorted[-1]), _CDF_GRID)
    f = np.exp((1.0 - alpha) * v - mu * np.exp(v))
    partial = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2.0 * np.diff(v))])
    return np.interp(np.log(t_sorted), v, partial) / math.exp(_log_etpl_norm(alpha, mu))
