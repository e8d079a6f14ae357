"""Training trajectories: the checkpoints of one run (a series whose rows have a ``step``) over steps.

Per metric of the series' checkpoints (the models.tsv metrics, and the accuracy where the rows have
one), the *settling step*: the first step from which the metric stays within its final value's
spread until the end of the run. The spread of the final checkpoint's value v is

- its bootstrap interval ``[metric_lo, metric_hi]`` where the final checkpoint has a finite one
  (the FIT_METRICS' model means: zooscope.analysis.metrics.summarize, at config ``fit.level``),
  widened to include v itself (a percentile interval need not contain its point estimate);
- else the tolerance band v +- TOLERANCE * |v|.

A checkpoint whose value is missing (NaN) is outside every spread. ``alpha_by_depth`` gives the
layer-by-step matrix of alpha (the heatmap). Docs: docs/finetunes.md, "Training trajectories".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from zooscope.analysis.aggregate import metric_columns, models_table

# The relative half-width of the spread of a metric without a bootstrap interval.
TOLERANCE = 0.05
SPREAD_BOOTSTRAP = "bootstrap"
SPREAD_TOLERANCE = "tolerance"
# trajectories.tsv, one row per (series, metric).
TRAJECTORY_COLUMNS = (
    "series", "metric", "num_checkpoints", "first_step", "final_step", "final_value", "spread_lo", "spread_hi",
    "spread", "settled_step", "settled_fraction",
)


@dataclass(frozen=True)
class Settling:
    """When a metric settles: the spread [lo, hi] of its final value (``kind``: bootstrap or
    tolerance) and the first step from which every later value lies in it (``step``; NaN when the
    final value itself is missing)."""

    final: float
    lo: float
    hi: float
    kind: str
    step: float


def checkpoints_table(metas: Sequence[Mapping], summaries: Sequence[Mapping],
                      steps: Mapping[str, float]) -> pd.DataFrame:
    """The series' checkpoints as models.tsv rows (zooscope.analysis.aggregate.models_table) with
    their ``step`` (``steps``: model -> step) as the second column, sorted by step."""
    frame = models_table(list(metas), list(summaries))
    frame.insert(1, "step", [float(steps[model]) for model in frame["model"]])
    return frame.sort_values("step", kind="stable").reset_index(drop=True)


def trajectory_metrics(checkpoints: pd.DataFrame) -> list[str]:
    """The metrics followed over the steps: accuracy first, then the models.tsv metrics (step is no
    metric), each where some checkpoint has a value (not, say, rand_distance without esd.randomize)."""
    metrics = ["accuracy", *(column for column in metric_columns(checkpoints) if column != "step")]
    return [metric for metric in metrics if checkpoints[metric].notna().any()]


def spread(final: float, lo: float = math.nan, hi: float = math.nan) -> tuple[float, float, str]:
    """The spread of a final value (module docstring): its bootstrap interval where finite, else the band."""
    if math.isfinite(lo) and math.isfinite(hi):
        return min(lo, final), max(hi, final), SPREAD_BOOTSTRAP
    half = TOLERANCE * abs(final)
    return final - half, final + half, SPREAD_TOLERANCE


def settling(steps: Sequence[float], values: Sequence[float], lo: float = math.nan, hi: float = math.nan) -> Settling:
    """The settling of one metric: ``values`` at ``steps`` (ascending), ``lo``/``hi`` the final
    checkpoint's bootstrap interval (NaN: none)."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if steps.size == 0 or np.any(np.diff(steps) <= 0):
        raise ValueError("a trajectory needs its checkpoints in strictly increasing step order")
    final = float(values[-1])
    if not math.isfinite(final):
        return Settling(final, math.nan, math.nan, SPREAD_TOLERANCE, math.nan)
    low, high, kind = spread(final, lo, hi)
    inside = np.isfinite(values) & (values >= low) & (values <= high)
    # the last checkpoint outside; the run settles at the one after it
    outside = np.flatnonzero(~inside)
    first = 0 if outside.size == 0 else int(outside[-1]) + 1
    return Settling(final, low, high, kind, float(steps[first]))


def trajectory_table(series: str, checkpoints: pd.DataFrame) -> pd.DataFrame:
    """trajectories.tsv's rows of one series (TRAJECTORY_COLUMNS), one per :func:`trajectory_metrics`.
    ``settled_fraction``: the settling step's position in the run, (settled - first) / (final - first)
    (0: settled from the first checkpoint on; 1: only at the final one)."""
    steps = checkpoints["step"].to_numpy(dtype=float)
    final = checkpoints.iloc[-1]
    rows = []
    for metric in trajectory_metrics(checkpoints):
        result = settling(steps, checkpoints[metric].to_numpy(dtype=float),
                          float(final.get(f"{metric}_lo", math.nan)), float(final.get(f"{metric}_hi", math.nan)))
        span = steps[-1] - steps[0]
        rows.append({
            "series": series, "metric": metric, "num_checkpoints": len(steps), "first_step": steps[0],
            "final_step": steps[-1], "final_value": result.final, "spread_lo": result.lo, "spread_hi": result.hi,
            "spread": result.kind, "settled_step": result.step,
            "settled_fraction": (result.step - steps[0]) / span if span > 0 else 0.0,
        })
    return pd.DataFrame(rows, columns=TRAJECTORY_COLUMNS)


@dataclass(frozen=True)
class AlphaByDepth:
    """The heatmap's data: ``alpha[i, j]`` is the mean alpha of the fitted matrices of layer
    ``layers[i]`` (in depth order) at ``steps[j]``; NaN where the layer has no fit there."""

    layers: list[str]
    steps: list[float]
    alpha: np.ndarray


def alpha_by_depth(layers_by_step: Mapping[float, pd.DataFrame]) -> AlphaByDepth:
    """Layer-by-step alpha of a run from each checkpoint's layers.tsv (``step -> table``): the
    rows are every layer of any checkpoint, ordered by depth (then name); a Conv2d's slices are
    averaged into their layer's one value, as in the correlation flow."""
    steps = sorted(layers_by_step)
    depth: dict[str, float] = {}
    for table in layers_by_step.values():
        for layer, value in zip(table["layer"].astype(str), pd.to_numeric(table["depth"], errors="coerce")):
            depth.setdefault(layer, float(value))
    layers = sorted(depth, key=lambda layer: (depth[layer], layer))
    alpha = np.full((len(layers), len(steps)), np.nan)
    row_of = {layer: i for i, layer in enumerate(layers)}
    for j, step in enumerate(steps):
        table = layers_by_step[step]
        fitted = table[table["status"] == "ok"]
        for layer, value in fitted.groupby(fitted["layer"].astype(str))["alpha"].mean().items():
            alpha[row_of[layer], j] = value
    return AlphaByDepth(layers=layers, steps=[float(step) for step in steps], alpha=alpha)
