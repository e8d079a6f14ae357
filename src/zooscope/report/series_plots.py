"""Figures of one series: correlation flow (alpha by depth) and each metric against accuracy."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from zooscope.analysis.metrics import OVER_TRAINED_BELOW, UNDER_TRAINED_ABOVE
from zooscope.config import FitSettings
from zooscope.io import safe_filename
from zooscope.report.figures import as_float, field, line_style, plt, save_figure


# --------------------------------------------------------------------------------------------
# Correlation flow



def relative_depth(depth) -> np.ndarray:
    """Depth indices mapped onto [0, 1]: (depth - first) / (last - first); a model with one
    depth gets 0. Missing depths stay NaN."""
    values = pd.to_numeric(pd.Series(depth), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return values
    span = finite.max() - finite.min()
    return (values - finite.min()) / span if span > 0 else np.where(np.isfinite(values), 0.0, np.nan)


def plot_correlation_flow(
    layers_by_model: Mapping[str, pd.DataFrame],
    path: str | os.PathLike,
    *,
    series: str,
) -> Path:
    """Write :func:`correlation_flow_figure` to ``path``."""
    return save_figure(correlation_flow_figure(layers_by_model, series=series), path)


def correlation_flow_figure(layers_by_model: Mapping[str, pd.DataFrame], *, series: str):
    """Correlation flow of one series (Martin, Peng & Mahoney 2021): layer alpha against relative depth, one line
    per model, so that models of different depths share one axis.

    Each DataFrame needs the columns ``depth``, ``alpha`` and ``status``. Only rows with
    ``status == "ok"`` are used; rows that share a depth (the slices of a Conv2D layer) are
    averaged, so each model has one alpha per depth. The x axis is :func:`relative_depth`, taken
    over all of the model's rows (skipped layers too, so that a layer keeps its true position).
    Models are drawn and listed in the legend in sorted order; a model without fitted layers is
    still listed, marked "(no fitted layers)". Dotted lines mark the over-/under-trained
    thresholds (zooscope.analysis.metrics: alpha = 2 and alpha = 6).
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    try:
        for i, model in enumerate(sorted(layers_by_model, key=str)):
            frame = layers_by_model[model]
            missing = [c for c in ("depth", "alpha", "status") if c not in frame.columns]
            if missing:
                raise ValueError(
                    f"layers of model {model!r}: missing column(s) {', '.join(map(repr, missing))}"
                    f" (columns present: {', '.join(map(repr, map(str, frame.columns)))})"
                )
            ok = (frame["status"].astype(str) == "ok").to_numpy()
            per_depth = (
                pd.DataFrame({"depth": relative_depth(frame["depth"])[ok],
                              "alpha": pd.to_numeric(frame["alpha"], errors="coerce").to_numpy(float)[ok]})
                .dropna()
                .groupby("depth", sort=True)["alpha"]
                .mean()
            )
            if per_depth.empty:
                ax.plot([], [], markersize=3, label=f"{model} (no fitted layers)", **line_style(i))
                continue
            ax.plot(per_depth.index.to_numpy(dtype=float), per_depth.to_numpy(dtype=float),
                    markersize=3, linewidth=1.2, label=str(model), **line_style(i))
    except Exception:
        plt.close(fig)
        raise

    for level in (OVER_TRAINED_BELOW, UNDER_TRAINED_ABOVE):
        ax.axhline(level, color="0.5", linestyle=":", linewidth=1)
    ax.set_xlabel("relative depth (0 = first layer, 1 = last layer)")
    ax.set_ylabel("alpha (power-law exponent of the layer ESD)")
    ax.set_title(f"Correlation flow: {series}")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ncol = 1 if len(handles) <= 16 else 2
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, ncol=ncol,
                  frameon=False)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Metric vs accuracy


def _series_rows(models: pd.DataFrame, series: Any) -> pd.DataFrame:
    mask = models["series"].notna() & (models["series"].astype(str) == str(series))
    return models.loc[mask]


def plot_metric_vs_accuracy(
    models: pd.DataFrame,
    regression_row,
    path: str | os.PathLike,
    *,
    series: str,
    metric: str,
    level: float = FitSettings.level,
) -> Path:
    """Write :func:`metric_vs_accuracy_figure` to ``path``."""
    return save_figure(metric_vs_accuracy_figure(models, regression_row, series=series, metric=metric, level=level), path)


def metric_vs_accuracy_figure(models: pd.DataFrame, regression_row, *, series: str, metric: str,
                              level: float = 0.95):
    """Scatter of accuracy against one metric for the models of one series.

    Each point is labelled with its model name. The OLS line from ``regression_row`` (a row of
    :func:`zooscope.analysis.regression.regress`: a mapping, pandas row or object with ``slope,
    intercept, r2, kendall_tau, n`` and, where present, the intervals ``slope_lo, slope_hi,
    kendall_tau_lo, kendall_tau_hi``) is drawn over the range of the metric with its confidence
    band at ``level`` (statsmodels, :func:`zooscope.analysis.regression.ols_band`), with R^2 and
    Kendall tau in the legend; when its statistics are NaN (n < 3, constant metric) or the row
    is None, only the points are drawn and the title says why. Rows where the metric or the
    accuracy is missing or not finite are not drawn.
    """
    from zooscope.analysis.regression import ols_band

    for column in ("model", "series", "accuracy", metric):
        if column not in models.columns:
            raise ValueError(
                f"missing column {column!r} (columns present: "
                f"{', '.join(map(repr, map(str, models.columns)))})"
            )
    rows = _series_rows(models, series)
    x = pd.to_numeric(rows[metric], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    y = pd.to_numeric(rows["accuracy"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    names = [str(m) for m in rows["model"].to_numpy()[keep]]

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.scatter(x, y, s=28, color="tab:blue", zorder=3, label=f"models (n = {x.size})")
    for xi, yi, name in zip(x, y, names):
        ax.annotate(name, (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize=7)

    slope = as_float(field(regression_row, "slope"))
    intercept = as_float(field(regression_row, "intercept"))
    r2 = as_float(field(regression_row, "r2"))
    tau = as_float(field(regression_row, "kendall_tau"))
    title = f"{series}: accuracy vs {metric}"
    if math.isfinite(slope) and math.isfinite(intercept) and x.size:
        lo, hi = float(np.min(x)), float(np.max(x))
        pad = 0.05 * (hi - lo) if hi > lo else 0.5
        xs = np.linspace(lo - pad, hi + pad, 50)
        ax.plot(xs, intercept + slope * xs, color="tab:red", linewidth=1.5,
                label=f"OLS: accuracy = {slope:.4g} * {metric} + {intercept:.4g}\n"
                      f"R^2 = {r2:.3f}, Kendall tau = {tau:.3f}")
        band_lo, band_hi = ols_band(x, y, xs, level=level)
        if np.all(np.isfinite(band_lo)):
            ax.fill_between(xs, band_lo, band_hi, color="tab:red", alpha=0.15, linewidth=0,
                            label=f"{level:.0%} confidence band of the line")
        title += f"\nR^2 = {r2:.3f}, Kendall tau = {tau:.3f}"
        tau_lo = as_float(field(regression_row, "kendall_tau_lo"))
        tau_hi = as_float(field(regression_row, "kendall_tau_hi"))
        if math.isfinite(tau_lo) and math.isfinite(tau_hi):
            title += f" [{tau_lo:.2f}, {tau_hi:.2f}]"
    else:
        title += "\nno fit (fewer than 3 models or constant metric)"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(metric)
    ax.set_ylabel("reported accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.margins(x=0.12, y=0.1)  # room for the point labels
    fig.tight_layout()
    return fig


def plot_series_regressions(
    models: pd.DataFrame,
    regressions: pd.DataFrame,
    out_dir: str | os.PathLike,
) -> list[Path]:
    """One metric-vs-accuracy plot per row of ``regressions``: ``out_dir/{series}/{metric}.png``.

    Series and metric names are made file names with :func:`safe_filename`. Two different names
    that would become the same file raise ValueError (before anything is written). Returns the
    paths written, in the order of ``regressions``.
    """
    for column in ("series", "metric"):
        if column not in regressions.columns:
            raise ValueError(f"regressions table lacks the column {column!r}")
    out_dir = Path(out_dir)
    targets: list[tuple[Path, Any, Any]] = []
    owner: dict[Path, tuple[str, str]] = {}
    for series, metric in zip(regressions["series"], regressions["metric"]):
        target = out_dir / safe_filename(series) / f"{safe_filename(metric)}.png"
        key = (str(series), str(metric))
        if target in owner and owner[target] != key:
            raise ValueError(
                f"series/metric {key} and {owner[target]} would both be written to {target}; "
                "rename one of them"
            )
        owner[target] = key
        targets.append((target, series, metric))

    written: list[Path] = []
    for (target, series, metric), (_, row) in zip(targets, regressions.iterrows()):
        written.append(
            plot_metric_vs_accuracy(models, row, target, series=str(series), metric=str(metric))
        )
    return written



def plot_series(*, series: str, layers_by_model: Mapping[str, pd.DataFrame], models: pd.DataFrame,
                regressions: pd.DataFrame, out_dir, level: float = FitSettings.level) -> list[Path]:
    """All figures of one series into ``out_dir``: ``correlation_flow.png`` and ``{metric}.png``
    (each metric against accuracy, with the fitted line and its band at ``level``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_correlation_flow(layers_by_model, out_dir / "correlation_flow.png", series=series)]
    for row in regressions[regressions["series"].astype(str) == str(series)].itertuples(index=False):
        written.append(plot_metric_vs_accuracy(models, row, out_dir / f"{safe_filename(row.metric)}.png",
                                               series=series, metric=row.metric, level=level))
    return written
