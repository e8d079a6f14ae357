"""Minimisation of a smooth function of two parameters within bounds, by projected Newton.

The likelihood-ratio alternatives (zooscope.fits.goodness, .truncated) are fitted over two
parameters each, with the analytic gradient and Hessian. scipy's L-BFGS-B did that in about a
millisecond per fit, most of it the wrapper's overhead, and importing scipy.optimize and
scipy.special cost every fit job 0.22 s before its first fit. :func:`minimize_box` is the textbook
projected Newton method (Bertsekas 1982), in plain floats (2 x 2 algebra in closed form):

* the active set: a parameter on a bound whose derivative points out of the box stays there;
* the step: Newton's on the free parameters, with the Hessian shifted by a multiple of the
  identity until it is positive definite (Levenberg), so that every step descends also where the
  function is not convex; where the projected step does not descend, steepest descent;
* Armijo backtracking along the step, projected onto the box;
* it stops when no step lowers the value any more (the function's precision) or the projected
  gradient is zero.

On a convex function (the etpl's likelihood) it converges to the minimum from any start; on
others to a local minimum, as L-BFGS-B does (callers try several starts where that matters).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

__all__ = ["Minimum", "minimize_box"]

_ARMIJO = 1e-4
_HALVINGS = 60

Terms = tuple[float, tuple[float, float], tuple[float, float, float]]  # value, gradient, (h00, h01, h11)


@dataclass(frozen=True)
class Minimum:
    """Result of :func:`minimize_box`: the point, its value and the number of steps taken."""

    x: tuple[float, float]
    fun: float
    steps: int


def minimize_box(terms: Callable[[float, float], Terms], start, bounds, *, max_steps: int = 500) -> Minimum:
    """Minimise f(a, b) within box bounds.

    ``terms(a, b)`` returns the value, the gradient (da, db) and the Hessian (h_aa, h_ab, h_bb);
    a value of inf or NaN counts as outside the domain (the step is shortened). ``bounds`` is
    ((a_lo, a_hi), (b_lo, b_hi)), any of them infinite; ``start`` is clipped into the box.
    """
    (a_lo, a_hi), (b_lo, b_hi) = bounds
    a, b = min(max(float(start[0]), a_lo), a_hi), min(max(float(start[1]), b_lo), b_hi)
    value, gradient, hessian = terms(a, b)
    if not math.isfinite(value):
        raise ValueError(f"the start ({a:g}, {b:g}) is outside the function's domain")
    steps = 0
    while steps < max_steps:
        ga, gb = gradient
        free_a = not ((a <= a_lo and ga > 0) or (a >= a_hi and ga < 0))
        free_b = not ((b <= b_lo and gb > 0) or (b >= b_hi and gb < 0))
        ga, gb = (ga if free_a else 0.0), (gb if free_b else 0.0)
        if ga == 0.0 and gb == 0.0:
            break
        haa, hab, hbb = hessian
        scale = max(abs(haa), abs(hab), abs(hbb), 1e-300) if all(map(math.isfinite, hessian)) else 1.0
        improved = None
        for da, db in (_newton_step(ga, gb, haa, hab, hbb, free_a, free_b), (-ga / scale, -gb / scale)):
            improved = _line_search(terms, a, b, value, ga, gb, da, db, bounds)
            if improved is not None:
                break
        if improved is None:  # no decrease left at this precision
            break
        a, b, (value, gradient, hessian) = improved
        steps += 1
    return Minimum(x=(a, b), fun=float(value), steps=steps)


def _line_search(terms, a, b, value, ga, gb, da, db, bounds):
    """Armijo backtracking along (da, db), projected onto the box: the new point and its terms,
    or None when no step lowers the value."""
    (a_lo, a_hi), (b_lo, b_hi) = bounds
    size = 1.0
    for _ in range(_HALVINGS):
        ta, tb = min(max(a + size * da, a_lo), a_hi), min(max(b + size * db, b_lo), b_hi)
        if ta == a and tb == b:
            return None
        new = terms(ta, tb)
        if math.isfinite(new[0]) and new[0] < value and new[0] <= value + _ARMIJO * (ga * (ta - a) + gb * (tb - b)):
            return ta, tb, new
        size /= 2.0
    return None


def _newton_step(ga, gb, haa, hab, hbb, free_a, free_b):
    """-H^-1 g on the free parameters, H shifted to be positive definite; steepest descent if H
    is not finite."""
    if not all(map(math.isfinite, (haa, hab, hbb))):
        return -ga, -gb
    if not free_a:  # one free parameter: a 1 x 1 Hessian
        return 0.0, -gb / _positive(hbb)
    if not free_b:
        return -ga / _positive(haa), 0.0
    # eigenvalues of [[haa, hab], [hab, hbb]]
    mean, radius = (haa + hbb) / 2.0, math.hypot((haa - hbb) / 2.0, hab)
    smallest, largest = mean - radius, mean + radius
    scale = max(abs(smallest), abs(largest), 1e-300)
    shift = 0.0 if smallest > 1e-12 * scale else -smallest + 1e-8 * scale
    haa, hbb = haa + shift, hbb + shift
    det = haa * hbb - hab * hab
    if not det > 0.0:
        return -ga, -gb
    da, db = -(hbb * ga - hab * gb) / det, -(haa * gb - hab * ga) / det
    return (da, db) if ga * da + gb * db < 0.0 else (-ga, -gb)


def _positive(h: float) -> float:
    """A 1 x 1 Hessian made positive, as the 2 x 2 one is shifted."""
    return h if h > 0.0 else abs(h) + 1e-8 * max(abs(h), 1.0)
