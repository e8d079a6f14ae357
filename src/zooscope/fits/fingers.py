"""Robust tails: WeightWatcher's ``fix_fingers`` options (config ``fit.fingers``).

"Fingers" are a few eigenvalues far above the rest of an ESD's tail (WeightWatcher's users meet
them as spurious alphas). Two remedies, as WeightWatcher names them:

* ``xmin_peak``: the xmin search is restricted to eigenvalues within PEAK_WINDOW (5 %) of the
  ESD's peak (:func:`zooscope.fits.truncated.esd_peak`), WeightWatcher's window, so a few large
  values cannot pull xmin up into them. :func:`peak_xmin_range` gives the range.
* ``clip_xmax``: the largest eigenvalue is clipped while it is improbably large for the fitted
  tail, then the tail is refitted with the full search; at most MAX_FINGERS (WeightWatcher's
  default, 10) values. "Improbably large": under the fitted power law the largest of n tail values
  exceeds x with probability 1 - (1 - (x/xmin)^(1-alpha))^n; the top value is a finger when that
  probability at x = xmax is below FINGER_P (1 %). WeightWatcher clips until alpha drops by a
  fixed amount instead; a tail probability is calibrated (a clean power-law tail loses its top
  value in about 1 % of layers) and needs no scale. :func:`clip_fingers` does it.

The uncertainty of a fit with fingers handled (zooscope.fits.bootstrap, .goodness) resamples the
values that the final fit used, with its xmin range: the fingers' removal is taken as given.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zooscope.config import FitSettings
from zooscope.fits.powerlaw import PowerLawFit, fit_sorted

__all__ = ["FINGERS", "PEAK_WINDOW", "MAX_FINGERS", "FINGER_P", "ClippedFit", "peak_xmin_range",
           "finger_probability", "clip_fingers"]

#: The values of config ``fit.fingers`` (besides null: off).
FINGERS = ("xmin_peak", "clip_xmax")
PEAK_WINDOW = 0.05
MAX_FINGERS = 10
FINGER_P = 0.01


@dataclass(frozen=True)
class ClippedFit:
    """Result of :func:`clip_fingers`.

    fit: the power-law fit of the values kept.
    num_clipped: how many of the largest values were clipped.
    values: the values kept (sorted ascending, above the floor): what the fit used.
    """

    fit: PowerLawFit
    num_clipped: int
    values: np.ndarray


def peak_xmin_range(eigenvalues, *, floor: float = FitSettings.floor) -> tuple[float, float]:
    """The candidate xmins of ``xmin_peak``: within PEAK_WINDOW of the ESD's peak."""
    from zooscope.fits.truncated import esd_peak

    peak = esd_peak(eigenvalues, floor=floor)
    return peak * (1.0 - PEAK_WINDOW), peak * (1.0 + PEAK_WINDOW)


def finger_probability(fit: PowerLawFit) -> float:
    """P(the largest of n draws of the fitted power law >= xmax), n = the tail's size."""
    survival = (fit.xmax / fit.xmin) ** (1.0 - fit.alpha)  # P(X >= xmax) for one draw
    if survival >= 1.0:
        return 1.0
    return float(-math.expm1(fit.num_pl_spikes * math.log1p(-survival)))


def clip_fingers(sorted_values: np.ndarray, *, xmin_range: tuple[float, float] | None = None,
                 max_fingers: int = MAX_FINGERS, p: float = FINGER_P) -> ClippedFit:
    """Clip the largest values while they are fingers of the fitted tail (module docstring).

    ``sorted_values``: the eigenvalues above the floor, ascending (at least 2).
    """
    x = np.asarray(sorted_values, dtype=np.float64)
    fit = fit_sorted(x, xmin_range)
    clipped = 0
    while clipped < max_fingers and x.size - clipped > 2 and finger_probability(fit) < p:
        try:
            refit = fit_sorted(x[: x.size - clipped - 1], xmin_range)
        except ValueError:  # what would be left is degenerate: keep the last fit
            break
        clipped += 1
        fit = refit
    return ClippedFit(fit=fit, num_clipped=clipped, values=x[: x.size - clipped])
