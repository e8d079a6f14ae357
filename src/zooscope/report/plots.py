"""Figures: layer ESDs with their power-law fits, correlation flow, metric vs accuracy.

Each figure is built by a ``*_figure`` function that returns the matplotlib Figure (so that what
is drawn can be read back from its artists, as the tests do), and written by the ``plot_*``
function of the same name: one PNG (or several), atomically through
:func:`zooscope.io.atomic_path`, closing the figure. The Agg backend is selected before pyplot is imported, so plotting works
on cluster nodes without a display.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from zooscope.analysis.metrics import OVER_TRAINED_BELOW, UNDER_TRAINED_ABOVE  # noqa: E402
from zooscope.config import FitSettings  # noqa: E402
from zooscope.io import atomic_path, safe_filename  # noqa: E402

__all__ = [
    "plot_esd",
    "plot_esd_grid",
    "esd_figure",
    "plot_randomization",
    "plot_randomization_grid",
    "randomization_figure",
    "relative_depth",
    "plot_correlation_flow",
    "correlation_flow_figure",
    "plot_metric_vs_accuracy",
    "metric_vs_accuracy_figure",
    "plot_series_regressions",
    "plot_model_esds",
    "model_esd_figures",
    "plot_series",
    "plot_noise_ladder",
    "noise_ladder_figure",
    "plot_jacobian_series",
    "jacobian_esd_figure",
    "jacobian_overlay_figure",
    "hessian_figure",
]

DPI = 110


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            # The temporary name ends in ".part": give the format explicitly.
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return path


def _field(obj: Any, name: str, default: Any = math.nan) -> Any:
    """Attribute of a fit/result object, or key of a mapping/pandas row."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    if isinstance(obj, pd.Series):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------------------------
# ESD of one layer


def plot_esd(
    eigenvalues,
    fit,
    path: str | os.PathLike,
    *,
    title: str,
    reason: str | None = None,
) -> Path:
    """Plot the ESD of one layer with its power-law tail fit; write a PNG to ``path``.

    The ESD is drawn as the empirical complementary CDF, P(lambda >= x), on log-log axes. Why
    the CCDF and not a histogram: it needs no binning, so every eigenvalue of the tail appears
    as its own point (a tail has few eigenvalues, and log-spaced histogram bins there hold 0 or
    1 of them and look like noise); a power-law density lambda^(-alpha) is a straight line of
    slope 1 - alpha in it; and it is the curve that the fit's KS distance D is measured on
    (Clauset, Shalizi & Newman 2009 show their fits the same way).

    Parameters
    ----------
    eigenvalues
        The layer's eigenvalues (any order). Non-positive and non-finite values cannot be drawn
        on log axes and are left out (their count goes into the caption).
    fit
        An object with the attributes (or a mapping/row with the keys) ``alpha, xmin, xmax, D,
        num_pl_spikes`` -- e.g. :class:`zooscope.PowerLawFit` -- or ``None`` when the layer was
        not fitted. A fit whose alpha or xmin is NaN counts as not fitted. The fitted tail is
        drawn over [xmin, xmax] as (fraction of eigenvalues >= xmin) * (x / xmin)^(1 - alpha),
        i.e. the fitted power law anchored where the tail begins, with a vertical line at xmin.
    path
        Output PNG.
    title
        Figure title (e.g. "vgg11 / features.0 [slice 3]").
    reason
        Why the layer was not fitted, shown as "not fitted: <reason>" when ``fit`` is None.
    """
    return plot_esd_grid([(eigenvalues, fit, title, reason)], path)


def plot_esd_grid(panels: list[tuple], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Several ESDs (:func:`plot_esd`), one panel each, on one figure (:func:`esd_figure`)."""
    return _save(esd_figure(panels, title=title), path)


def esd_figure(panels: list[tuple], *, title: str | None = None):
    """The Figure of :func:`plot_esd_grid`: one panel per ESD, e.g. the slices of a Conv2D layer.
    ``panels`` holds (eigenvalues, fit, panel title, reason) tuples."""
    fig, axes = _grid(len(panels), title)
    for ax, (eigenvalues, fit, panel_title, reason) in zip(axes, panels):
        draw_esd(ax, eigenvalues, fit, title=panel_title, reason=reason, small=len(panels) > 1)
    return _layout_grid(fig, single=len(panels) == 1)


def _ccdf_points(values) -> tuple[np.ndarray, np.ndarray]:
    """The positive, finite ``values`` sorted, and P(value >= x) at each, ties included (the CCDF
    of :func:`plot_esd`)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    drawn = np.sort(values[np.isfinite(values) & (values > 0)])
    return drawn, (drawn.size - np.arange(drawn.size)) / max(drawn.size, 1)


def _power_law_line(drawn: np.ndarray, alpha: float, xmin: float, xmax: float) -> tuple[np.ndarray, np.ndarray]:
    """The fitted power law over [xmin, xmax] on the CCDF of ``drawn``, anchored where the tail
    begins: (share of values >= xmin) * (x / xmin)^(1 - alpha) (:func:`plot_esd`)."""
    share = float(np.mean(drawn >= xmin)) if drawn.size else 1.0
    xs = np.geomspace(xmin, max(xmax, xmin * (1 + 1e-9)), 200)
    return xs, max(share, 1.0 / max(drawn.size, 1)) * (xs / xmin) ** (1.0 - alpha)


def draw_esd(ax, eigenvalues, fit, *, title: str, reason: str | None = None, small: bool = False) -> None:
    """The ESD of :func:`plot_esd` on the axes ``ax``; ``small`` for a panel of a grid."""
    drawn, ccdf = _ccdf_points(eigenvalues)
    left_out = np.size(eigenvalues) - drawn.size
    fontsize = 6 if small else 8

    alpha = _float(_field(fit, "alpha"))
    xmin = _float(_field(fit, "xmin"))
    fitted = fit is not None and math.isfinite(alpha) and math.isfinite(xmin) and xmin > 0

    n_all = drawn.size
    if n_all:
        ax.loglog(drawn, ccdf, linestyle="none", marker="o", markersize=2 if small else 3, alpha=0.6,
                  color="tab:blue", label=f"ESD, {n_all} eigenvalues (CCDF)")
    else:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.text(0.5, 0.5, "no positive eigenvalues", ha="center", va="center",
                transform=ax.transAxes)

    if fitted:
        xmax = _float(_field(fit, "xmax"))
        if not (math.isfinite(xmax) and xmax > xmin):
            xmax = float(drawn[-1]) if n_all and drawn[-1] > xmin else xmin * 10.0
        d_stat = _float(_field(fit, "D"))
        spikes = _field(fit, "num_pl_spikes", None)
        xs, ys = _power_law_line(drawn, alpha, xmin, xmax)
        label = f"power law fit: alpha = {alpha:.3f}, D = {d_stat:.3f}"
        if spikes is not None and not (isinstance(spikes, float) and math.isnan(spikes)):
            label += f"\n{int(spikes)} eigenvalues in the tail"
        ax.loglog(xs, ys, color="tab:red", linewidth=2, label=label)
        ax.axvline(xmin, color="tab:red", linestyle="--", linewidth=1,
                   label=f"xmin = {xmin:.4g}")
        ax.set_title(title, fontsize=fontsize + 1 if small else None)
    else:
        why = reason or "no fit"
        ax.set_title(f"{title}\nnot fitted: {why}", fontsize=fontsize + 1 if small else None)

    if not small:
        ax.set_xlabel("eigenvalue lambda (squared singular value of W)")
        ax.set_ylabel("P(eigenvalue >= lambda)")
    if left_out:
        ax.text(0.01, 0.01, f"{left_out} eigenvalues <= 0 or not finite not shown",
                transform=ax.transAxes, fontsize=fontsize, color="0.4")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left" if not left_out else "center left", fontsize=fontsize)
    ax.grid(True, which="major", alpha=0.3)


def plot_randomization(eigenvalues, randomized, shape: tuple[int, int], path: str | os.PathLike, *,
                       title: str) -> Path:
    """The randomization check of one matrix (Martin, Peng & Mahoney; docs/method.md) on one figure: the ESD, the ESD
    of the same matrix with its entries shuffled, and the Marchenko-Pastur density fitted to the
    ESD's bulk (:func:`zooscope.spectra.random_matrix.fit_marchenko_pastur`, ``shape`` = (N, M)).

    Densities of log10(lambda), with shared bins: ESDs span decades, and on a log axis the heavy
    tail, the MP bulk and the shuffled spectrum are all visible at once. The MP density is
    transformed to the same variable, p(log10 x) = p(x) x ln 10.
    """
    return plot_randomization_grid([(eigenvalues, randomized, shape, title)], path)


def plot_randomization_grid(panels: list[tuple], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Several randomization checks (:func:`plot_randomization`), one panel each, on one figure
    (:func:`randomization_figure`)."""
    return _save(randomization_figure(panels, title=title), path)


def randomization_figure(panels: list[tuple], *, title: str | None = None):
    """The Figure of :func:`plot_randomization_grid`. ``panels`` holds (eigenvalues, randomized,
    shape, panel title) tuples."""
    fig, axes = _grid(len(panels), title)
    for ax, (eigenvalues, randomized, shape, panel_title) in zip(axes, panels):
        draw_randomization(ax, eigenvalues, randomized, shape, title=panel_title, small=len(panels) > 1)
    return _layout_grid(fig, single=len(panels) == 1)


def draw_randomization(ax, eigenvalues, randomized, shape: tuple[int, int], *, title: str,
                       small: bool = False) -> None:
    """The randomization check of :func:`plot_randomization` on the axes ``ax``."""
    from zooscope.spectra.random_matrix import esd_distance, fit_marchenko_pastur, mp_density

    values = np.asarray(eigenvalues, dtype=np.float64).ravel()
    rand = np.asarray(randomized, dtype=np.float64).ravel()
    mp, mp_rand = fit_marchenko_pastur(values, shape), fit_marchenko_pastur(rand, shape)
    logs, rand_logs = np.log10(values[values > 0]), np.log10(rand[rand > 0])
    bins = np.linspace(min(logs.min(), rand_logs.min()), max(logs.max(), rand_logs.max()), 61)
    ax.hist(logs, bins=bins, density=True, alpha=0.55, color="tab:blue",
            label=f"ESD ({mp.num_spikes} above the MP edge)")
    ax.hist(rand_logs, bins=bins, density=True, alpha=0.45, color="tab:green",
            label=f"shuffled W ({mp_rand.num_spikes} traps), KS distance {esd_distance(values, rand):.3f}")
    # the lower edge is 0 for a square matrix, where the log-variable density tends to 0 anyway
    lower = max(mp.scale * (1 - math.sqrt(mp.ratio)) ** 2, mp.bulk_edge * 1e-6)
    x = np.geomspace(lower * (1 + 1e-9), mp.bulk_edge * (1 - 1e-9), 400)
    ax.plot(np.log10(x), mp_density(x, mp.ratio, mp.scale) * x * math.log(10.0), color="tab:red", linewidth=2,
            label=f"Marchenko-Pastur fit of the bulk (Q = {1 / mp.ratio:.3g})")
    ax.axvline(math.log10(mp.bulk_edge), color="tab:red", linestyle="--", linewidth=1,
               label=f"MP bulk edge = {mp.bulk_edge:.4g}")
    if not small:
        ax.set_xlabel("log10 eigenvalue")
        ax.set_ylabel("density of log10 eigenvalue")
    ax.set_title(title, fontsize=7 if small else None)
    ax.legend(fontsize=6 if small else 8)
    ax.grid(True, alpha=0.3)


def _grid(panels: int, title: str | None):
    """A figure of ``panels`` axes, about square (a 3x3 kernel's slices: 3 x 3), each 6.4 x 4.8
    inches for one panel and 4 x 3 inches in a grid; the unused axes are removed."""
    if panels == 1:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        return fig, [ax]
    columns = math.ceil(math.sqrt(panels))
    rows = math.ceil(panels / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.0 * columns, 3.0 * rows + 0.4), squeeze=False)
    flat = axes.ravel().tolist()
    for ax in flat[panels:]:
        ax.remove()
    if title:
        fig.suptitle(title)
    return fig, flat[:panels]


def _layout_grid(fig, *, single: bool):
    if single:
        fig.tight_layout()
    else:  # tight_layout over a grid of log axes costs more than the drawing
        fig.subplots_adjust(left=0.04, right=0.99, bottom=0.04, top=0.93, wspace=0.22, hspace=0.4)
    return fig


# --------------------------------------------------------------------------------------------
# Correlation flow


def _style(i: int) -> dict[str, Any]:
    colors = plt.get_cmap("tab10").colors
    styles = ("-", "--", ":", "-.")
    markers = ("o", "s", "^", "D", "v")
    return {
        "color": colors[i % len(colors)],
        "linestyle": styles[(i // len(colors)) % len(styles)],
        "marker": markers[(i // len(colors)) % len(markers)],
    }


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
    return _save(correlation_flow_figure(layers_by_model, series=series), path)


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
                ax.plot([], [], markersize=3, label=f"{model} (no fitted layers)", **_style(i))
                continue
            ax.plot(per_depth.index.to_numpy(dtype=float), per_depth.to_numpy(dtype=float),
                    markersize=3, linewidth=1.2, label=str(model), **_style(i))
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
    return _save(metric_vs_accuracy_figure(models, regression_row, series=series, metric=metric, level=level), path)


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

    slope = _float(_field(regression_row, "slope"))
    intercept = _float(_field(regression_row, "intercept"))
    r2 = _float(_field(regression_row, "r2"))
    tau = _float(_field(regression_row, "kendall_tau"))
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
        tau_lo = _float(_field(regression_row, "kendall_tau_lo"))
        tau_hi = _float(_field(regression_row, "kendall_tau_hi"))
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


def plot_model_esds(index: dict, layers: pd.DataFrame, *, esd_dir, out_dir, model: str) -> list[Path]:
    """The ESD figure of every layer of one model that has eigenvalues, ``out_dir/{layer}.png``,
    and for its fitted matrices with shuffled spectra (config ``randomize``) the randomization
    check ``{layer}.rand.png`` (:func:`model_esd_figures`), written one at a time."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_save(fig, out_dir / name) for name, fig in model_esd_figures(index, layers, esd_dir=esd_dir, model=model)]


def model_esd_figures(index: dict, layers: pd.DataFrame, *, esd_dir, model: str) -> Iterator[tuple[str, Any]]:
    """(file name, Figure) of every figure of :func:`plot_model_esds`, made one at a time as
    the iterator advances: per layer that has eigenvalues its ESD figure (:func:`esd_figure`),
    and for its fitted matrices with shuffled spectra the randomization check
    (:func:`randomization_figure`). A layer analysed as several matrices (the slices of a Conv2D
    layer, config ``conv2d: slices``) gets one panel per slice on each.

    ``index`` is the esd stage's index, ``layers`` the fit stage's layers.tsv; rows that were
    skipped are drawn without a fit, with their reason in the title.
    """
    from zooscope.spectra.esd import load_layer_eigenvalues

    records = {record["name"]: record for record in index["layers"] if record["status"] == "ok"}
    rows_by_layer: dict[str, list] = {}
    for row in layers.itertuples(index=False):
        if row.layer in records and np.isfinite(row.lambda_max):
            rows_by_layer.setdefault(row.layer, []).append(row)
    for layer, rows in rows_by_layer.items():
        record = records[layer]
        spectra = load_layer_eigenvalues(esd_dir, record)
        randomized = load_layer_eigenvalues(esd_dir, record, randomized=True) if record.get("rand_file") else None
        first = rows[0]
        heading = f"{model}: {layer} ({first.type}, {first.N} x {first.M})"
        sliced = len(rows) > 1
        esd_panels, rand_panels = [], []
        for row in rows:
            values = spectra[record["slices"].index(row.slice)]
            panel_title = f"slice {row.slice}" if sliced else heading
            fitted = row.status == "ok"
            esd_panels.append((values, row if fitted else None, panel_title, None if fitted else row.reason))
            if fitted and randomized is not None:
                rand_panels.append((values, randomized[record["slices"].index(row.slice)], (row.N, row.M),
                                    panel_title if sliced else f"{heading}: randomization check"))
        title = f"{heading}, {len(rows)} slices" if sliced else None
        yield f"{safe_filename(layer)}.png", esd_figure(esd_panels, title=title)
        if rand_panels:
            yield (f"{safe_filename(layer)}.rand.png",
                   randomization_figure(rand_panels, title=title and f"{title}: randomization check"))


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


# --------------------------------------------------------------------------------------------
# Good versus bad (zooscope.analysis.discrimination)


def plot_noise_ladder(models: pd.DataFrame, noise: Mapping[str, float], discrimination: pd.DataFrame,
                      path: str | os.PathLike, *, series: str) -> Path:
    """Write :func:`noise_ladder_figure` to ``path``."""
    return _save(noise_ladder_figure(models, noise, discrimination, series=series), path)


def noise_ladder_figure(models: pd.DataFrame, noise: Mapping[str, float], discrimination: pd.DataFrame, *,
                        series: str):
    """Every metric of one label-noise series against the noise level, one small panel each, in
    the order of discrimination.tsv: the metrics that separate the series (|Kendall tau| = 1)
    first, drawn in green, those that rank it partly in orange, the rest in grey; each panel's
    title gives tau. ``noise`` maps model -> noise level, ``discrimination`` is the table of
    :func:`zooscope.analysis.discrimination.discrimination`."""
    from zooscope.analysis.discrimination import separating_metrics

    groups = separating_metrics(discrimination, series)
    colors = {**{m: "tab:green" for m in groups[0]}, **{m: "tab:orange" for m in groups[1]},
              **{m: "0.55" for m in groups[2]}}
    metrics = [*groups[0], *groups[1], *groups[2]]
    if not metrics:
        raise ValueError(f"discrimination table has no row for series {series!r}")
    taus = discrimination[discrimination["series"].astype(str) == str(series)].set_index("metric")["kendall_tau"]
    rows = models[models["model"].isin(list(noise)) & (models["series"].astype(str) == str(series))]
    level = rows["model"].map(noise).to_numpy(dtype=float)
    order = np.argsort(level, kind="stable")
    ncols = min(5, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.2 * nrows + 0.6), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        values = pd.to_numeric(rows[metric], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        ax.plot(level[order], values[order], marker="o", color=colors[metric], linewidth=1.5)
        tau = float(taus.get(metric, math.nan))
        ax.set_title(f"{metric}\ntau = {tau:+.2f}" if math.isfinite(tau) else f"{metric}\ntau: n/a", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        if metric in groups[0]:
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green")
                spine.set_linewidth(2)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("label noise", fontsize=8)
    fig.suptitle(f"{series}: each metric against the label noise (green: orders every model by noise, "
                 f"orange: partly, grey: no)", fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# The Jacobian stage (zooscope.jacobian.compute): the models of one series side by side


def plot_jacobian_esd_grid(spectra_by_model: Mapping[str, Mapping[str, np.ndarray]],
                           layers_by_model: Mapping[str, pd.DataFrame], path: str | os.PathLike, *,
                           titles: Mapping[str, str], series: str) -> Path:
    """Write :func:`jacobian_esd_figure` to ``path``."""
    return _save(jacobian_esd_figure(spectra_by_model, layers_by_model, titles=titles, series=series), path)


def jacobian_esd_figure(spectra_by_model: Mapping[str, Mapping[str, np.ndarray]],
                        layers_by_model: Mapping[str, pd.DataFrame], *, titles: Mapping[str, str], series: str):
    """ESDs of the Jacobian Gram J_l J_l^T: one row per layer, one column per model (side by
    side, in the order of ``spectra_by_model``), each the CCDF of the nonzero eigenvalues with
    the power-law fit of the model's Jacobian layers.tsv and its rank and effective rank.

    ``spectra_by_model[model]["gram/{layer}"]`` are the eigenvalues (zooscope.jacobian.compute spectra
    files); ``titles[model]`` heads its column.
    """
    models = list(spectra_by_model)
    layers = list(dict.fromkeys(str(layer) for frame in layers_by_model.values() for layer in frame["layer"]))
    fig, axes = plt.subplots(len(layers), len(models), figsize=(3.2 * len(models), 2.6 * len(layers)),
                             squeeze=False, sharex="row", sharey="row")
    for j, model in enumerate(models):
        rows = layers_by_model[model].assign(layer=lambda f: f["layer"].astype(str)).set_index("layer")
        for i, layer in enumerate(layers):
            ax = axes[i][j]
            drawn, ccdf = _ccdf_points(spectra_by_model[model].get(f"gram/{layer}", []))
            ax.set_xscale("log")
            ax.set_yscale("log")
            if drawn.size:
                ax.plot(drawn, ccdf, linestyle="none", marker="o", markersize=2, alpha=0.6, color="tab:blue")
            row = rows.loc[layer] if layer in rows.index else None
            alpha, xmin = _float(_field(row, "alpha")), _float(_field(row, "xmin"))
            text = f"rank {_float(_field(row, 'rank')):.0f}, eff. {_float(_field(row, 'effective_rank')):.1f}"
            if drawn.size and math.isfinite(alpha) and math.isfinite(xmin) and xmin > 0:
                xs, ys = _power_law_line(drawn, alpha, xmin, float(drawn[-1]))
                ax.plot(xs, ys, color="tab:red", linewidth=1.5)
                ax.axvline(xmin, color="tab:red", linestyle="--", linewidth=0.8)
                text = f"alpha {alpha:.2f}, D {_float(_field(row, 'D')):.2f}\n" + text
            elif row is not None:
                text = f"not fitted: {_field(row, 'reason', '')}\n" + text
            ax.text(0.03, 0.03, text, transform=ax.transAxes, fontsize=7, va="bottom")
            ax.grid(True, which="major", alpha=0.3)
            if i == 0:
                ax.set_title(titles.get(model, model), fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{layer}\nP(eigenvalue >= x)", fontsize=8)
            if i == len(layers) - 1:
                ax.set_xlabel("eigenvalue of J J^T", fontsize=8)
    fig.suptitle(f"{series}: Jacobian ESDs (nonzero eigenvalues of J_l J_l^T, CCDF) and power-law fits", fontsize=10)
    fig.tight_layout()
    return fig


def plot_jacobian_overlay(spectra_by_model: Mapping[str, Mapping[str, np.ndarray]], keys: list[str],
                          path: str | os.PathLike, *, titles: Mapping[str, str], title: str, xlabel: str) -> Path:
    """Write :func:`jacobian_overlay_figure` to ``path``."""
    return _save(jacobian_overlay_figure(spectra_by_model, keys, titles=titles, title=title, xlabel=xlabel), path)


def jacobian_overlay_figure(spectra_by_model: Mapping[str, Mapping[str, np.ndarray]], keys: list[str], *,
                            titles: Mapping[str, str], title: str, xlabel: str):
    """One panel per key (e.g. "diag/{layer}", "io"), the CCDF of every model's values overlaid,
    so that the tails of the models can be compared on the same axes."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for k, (model, spectra) in enumerate(spectra_by_model.items()):
            drawn, ccdf = _ccdf_points(spectra.get(key, []))
            if drawn.size:
                ax.loglog(drawn, ccdf, linewidth=1.2, label=titles.get(model, model).replace("\n", ", "),
                          **{k2: v for k2, v in _style(k).items() if k2 == "color"})
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("P(value >= x)", fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=6, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_hessian_densities(spectra_by_model: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike, *,
                           titles: Mapping[str, str], series: str) -> Path:
    """Write :func:`hessian_figure` to ``path``."""
    return _save(hessian_figure(spectra_by_model, titles=titles, series=series), path)


def hessian_figure(spectra_by_model: Mapping[str, Mapping[str, np.ndarray]], *, titles: Mapping[str, str],
                   series: str):
    """The SLQ quadrature of each model's loss Hessian, side by side: nodes (Ritz values, on a
    symmetric log axis: Hessians have a few large and many near-zero, partly negative,
    eigenvalues) against their weights, which sum to one."""
    models = [model for model, spectra in spectra_by_model.items() if "hessian/nodes" in spectra]
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(3.2 * max(len(models), 1), 3.2), squeeze=False,
                             sharey=True)
    for ax, model in zip(axes[0], models):
        nodes, weights = spectra_by_model[model]["hessian/nodes"], spectra_by_model[model]["hessian/weights"]
        ax.vlines(nodes, 1e-6, np.maximum(weights, 1e-6), color="tab:blue", linewidth=1)
        ax.set_xscale("symlog", linthresh=1e-2)
        ax.set_yscale("log")
        ax.set_ylim(1e-6, 1.5)
        ax.set_title(titles.get(model, model), fontsize=8)
        ax.set_xlabel(f"Hessian eigenvalue (top {nodes.max():.3g})", fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("SLQ weight", fontsize=8)
    fig.suptitle(f"{series}: Hessian spectral density of the mean loss (stochastic Lanczos quadrature)", fontsize=10)
    fig.tight_layout()
    return fig


def jacobian_column_title(meta: Mapping[str, Any]) -> str:
    """A model's column heading from its meta.json: name, label noise and accuracies (the
    training accuracy is on the labels it was trained on, noisy ones included)."""
    lines = [str(meta["model"])]
    noise = (meta.get("options") or {}).get("label_noise")
    training = meta.get("training") or {}
    if noise is not None:
        lines.append(f"{100 * float(noise):g} % labels shuffled")
    accuracies = []
    if training.get("train_accuracy") is not None:
        accuracies.append(f"train {training['train_accuracy']:.1f} %")
    if meta.get("accuracy") is not None:
        accuracies.append(f"test {meta['accuracy']:.1f} %")
    if accuracies:
        lines.append(", ".join(accuracies))
    return "\n".join(lines)


def plot_jacobian_series(spectra_by_model: Mapping[str, Mapping[str, np.ndarray]],
                         layers_by_model: Mapping[str, pd.DataFrame], *, titles: Mapping[str, str],
                         series: str, out_dir) -> list[Path]:
    """Every Jacobian figure of one series into ``out_dir``: ``jacobian_esd.png`` (the models'
    Gram ESDs side by side), ``jacobian_diag.png`` (diag(J^T J) tails overlaid), and where the
    spectra have them ``input_output.png`` and ``hessian.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers = list(dict.fromkeys(str(layer) for frame in layers_by_model.values() for layer in frame["layer"]))
    written = [
        plot_jacobian_esd_grid(spectra_by_model, layers_by_model, out_dir / "jacobian_esd.png",
                               titles=titles, series=series),
        plot_jacobian_overlay(spectra_by_model, [f"diag/{layer}" for layer in layers], out_dir / "jacobian_diag.png",
                              titles=titles, xlabel="diag(J^T J) element",
                              title=f"{series}: per-weight sum of squared gradients, diag(J^T J) (CCDF)"),
    ]
    if any("io" in spectra for spectra in spectra_by_model.values()):
        written.append(plot_jacobian_overlay(
            spectra_by_model, ["io"], out_dir / "input_output.png", titles=titles,
            xlabel="squared singular value", title=f"{series}: input-output Jacobian, pooled over samples"))
    if any("hessian/nodes" in spectra for spectra in spectra_by_model.values()):
        written.append(plot_hessian_densities(spectra_by_model, out_dir / "hessian.png", titles=titles, series=series))
    return written
