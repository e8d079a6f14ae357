"""Good versus bad: how well each metric ranks the models of a series by training quality.

A series whose models carry a noise level (the ``label_noise`` training option of the zoo row,
recorded in meta.json under ``options``) is a controlled good-to-bad ladder: the same
architecture trained on more and more shuffled labels. For every metric of models.tsv and every
such series, results/{zoo}/discrimination.tsv gives Kendall's tau-b between the metric and the
noise level (scipy.stats.kendalltau, signed). |tau| = 1 means the metric puts the models in
exactly the order of their noise level; its sign says whether the metric grows (+) or shrinks
(-) with noise. Only the order counts, so the table reads the same for a metric and any monotone
function of it (alpha and log alpha, lambda_max and log_spectral_norm).
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from zooscope.analysis.aggregate import metric_columns

__all__ = ["DISCRIMINATION_COLUMNS", "NOISE_OPTION", "SEPARATES_AT", "noise_levels",
           "discrimination", "separating_metrics"]

NOISE_OPTION = "label_noise"
DISCRIMINATION_COLUMNS = ("series", "metric", "n", "noise_min", "noise_max", "kendall_tau", "p_value",
                          "direction", "separates")
# A metric "separates" a series when it orders all of its models by noise level (|tau| = 1): with
# the 4 to 5 models of a ladder any weaker threshold would accept a metric that swaps two rungs.
SEPARATES_AT = 1.0
_TOLERANCE = 1e-12


def noise_levels(metas: Iterable[Mapping]) -> dict[str, float]:
    """Each model's noise level from its meta.json (``options.label_noise``); models without one
    are left out (a model trained without the option is not on a noise ladder)."""
    levels = {}
    for meta in metas:
        value = (meta.get("options") or {}).get(NOISE_OPTION)
        if value is not None:
            levels[meta["model"]] = float(value)
    return levels


def _row(series: str, metric: str, noise: np.ndarray, values: np.ndarray) -> dict:
    from scipy.stats import kendalltau

    keep = np.isfinite(noise) & np.isfinite(values)
    noise, values = noise[keep], values[keep]
    row = {"series": series, "metric": metric, "n": int(noise.size),
           "noise_min": float(noise.min()) if noise.size else math.nan,
           "noise_max": float(noise.max()) if noise.size else math.nan,
           "kendall_tau": math.nan, "p_value": math.nan, "direction": "", "separates": False}
    # tau needs two distinct noise levels and a metric that varies
    if noise.size >= 2 and np.unique(noise).size >= 2 and np.unique(values).size >= 2:
        result = kendalltau(noise, values)
        tau = float(result.statistic)
        row.update(kendall_tau=tau, p_value=float(result.pvalue),
                   direction="grows with noise" if tau > 0 else "shrinks with noise" if tau < 0 else "",
                   separates=bool(abs(tau) >= SEPARATES_AT - _TOLERANCE))
    return row


def discrimination(models: pd.DataFrame, noise: Mapping[str, float],
                   metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per (series with a noise level, metric): Kendall tau of the metric against the
    noise level over the series' models that have both (see the module docstring).

    A series enters when at least two of its models have a noise level. ``metrics`` defaults to
    every metric column of ``models`` (zooscope.analysis.aggregate.metric_columns). Rows come in series
    order, then metric order, so the table is byte-identical for identical inputs.
    """
    metrics = metric_columns(models) if metrics is None else list(metrics)
    missing = [column for column in ("model", "series", *metrics) if column not in models.columns]
    if missing:
        raise ValueError(f"models table lacks the column(s) {', '.join(missing)}")
    frame = models.assign(_noise=models["model"].map(noise).astype(float))
    rows = []
    for series in sorted(frame["series"].astype(str).unique()):
        members = frame[(frame["series"].astype(str) == series) & frame["_noise"].notna()]
        if len(members) < 2:
            continue
        level = members["_noise"].to_numpy(dtype=float)
        for metric in metrics:
            values = pd.to_numeric(members[metric], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            rows.append(_row(series, metric, level, values))
    return pd.DataFrame(rows, columns=list(DISCRIMINATION_COLUMNS))


def separating_metrics(table: pd.DataFrame, series: str) -> tuple[list[str], list[str], list[str]]:
    """The metrics of one series in discrimination.tsv: (those that separate it, those that rank
    it partly (0.5 <= |tau| < 1), the rest), each sorted by |tau| descending, then by name."""
    rows = table[table["series"].astype(str) == str(series)].copy()
    rows["_abs"] = rows["kendall_tau"].astype(float).abs()
    rows = rows.sort_values(["_abs", "metric"], ascending=[False, True], na_position="last", kind="stable")
    separates = rows["separates"].astype(str).str.lower() == "true"
    partly = ~separates & (rows["_abs"] >= 0.5)
    return (rows.loc[separates, "metric"].tolist(), rows.loc[partly, "metric"].tolist(),
            rows.loc[~separates & ~partly, "metric"].tolist())
