"""zooscope.fits.newton (projected Newton in a box) against scipy's L-BFGS-B and closed-form
minima, and zooscope.fits.goodness.log_ndtr against scipy.special."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, special

from zooscope.fits.goodness import log_ndtr
from zooscope.fits.newton import minimize_box


def rosenbrock(a, b):
    value = (1 - a) ** 2 + 100 * (b - a * a) ** 2
    gradient = (-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a))
    hessian = (2 - 400 * (b - a * a) + 800 * a * a, -400 * a, 200.0)
    return value, gradient, hessian


def quadratic(center, matrix):
    def terms(a, b):
        d = np.array([a, b]) - center
        g = matrix @ d
        return 0.5 * float(d @ g), (float(g[0]), float(g[1])), (matrix[0, 0], matrix[0, 1], matrix[1, 1])
    return terms


def test_an_interior_minimum_of_a_non_convex_function():
    # Rosenbrock is not convex away from its valley: the start's Hessian is indefinite
    result = minimize_box(rosenbrock, (-1.2, 1.0), ((-5, 5), (-5, 5)))
    assert result.x == pytest.approx((1.0, 1.0), abs=1e-6) and result.fun < 1e-12


@pytest.mark.parametrize("center, bounds, expected", [
    ((3.0, 0.5), ((-1, 1), (-1, 1)), None),  # one bound active
    ((3.0, 4.0), ((-1, 1), (-1, 1)), None),  # both
    ((0.2, -0.3), ((-1, 1), (-1, math.inf)), (0.2, -0.3)),  # interior, an infinite bound
])
def test_a_constrained_quadratic_matches_l_bfgs_b(center, bounds, expected):
    matrix = np.array([[2.0, 0.9], [0.9, 1.0]])
    terms = quadratic(np.array(center), matrix)
    result = minimize_box(terms, (0.0, 0.0), bounds)
    reference = optimize.minimize(lambda p: terms(*p)[0], x0=[0.0, 0.0], jac=lambda p: np.array(terms(*p)[1]),
                                  method="L-BFGS-B", bounds=bounds, options={"ftol": 1e-15, "gtol": 1e-12})
    assert result.x == pytest.approx(tuple(reference.x), abs=1e-7)
    assert result.fun <= reference.fun + 1e-12
    if expected is not None:
        assert result.x == pytest.approx(expected, abs=1e-12)
    for value, (lo, hi) in zip(result.x, bounds):
        assert lo <= value <= hi


def test_a_start_outside_the_domain_is_an_error():
    with pytest.raises(ValueError, match="outside the function's domain"):
        minimize_box(lambda a, b: (math.inf, (0.0, 0.0), (1.0, 0.0, 1.0)), (0.0, 0.0), ((-1, 1), (-1, 1)))


def test_log_ndtr_matches_scipy_over_its_whole_range():
    z = np.concatenate([np.linspace(-60.0, 38.0, 9801), [-1e5, -37.0, -36.999, 0.0, 1e-300, 5.0]])
    ours = np.array([log_ndtr(float(v)) for v in z])
    reference = special.log_ndtr(z)
    scale = np.maximum(np.abs(reference), 1e-300)
    # relative error: 2e-15 below 0 (measured 6.6e-16), 5e-14 up to 8 (1.2e-14, math.erfc's), and
    # 1e-10 above, where ln Phi ~ -Phi(-z) < 1e-15 itself
    tolerance = np.select([z < 0, z < 8], [2e-15, 5e-14], 1e-10)
    assert np.all(np.abs(ours - reference) <= tolerance * scale)
