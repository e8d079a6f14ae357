"""Figures: layer ESDs with their power-law fits, correlation flow, metric vs accuracy.

Every function writes one PNG (or several) atomically through :func:`zooscope.io.atomic_path`
and closes its figure. The Agg backend is selected before pyplot is imported, so plotting works
on cluster nodes without a display.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from zooscope.io import atomic_path  # noqa: E402

__all__ = [
    "safe_filename",
    "plot_esd",
    "plot_randomization",
    "plot_correlation_flow",
    "plot_metric_vs_accuracy",
    "plot_series_regressions",
    "plot_model_esds",
    "plot_series",
]

DPI = 110
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
# The warning thresholds of the metric definitions (alpha < 2 over-trained, > 6 under-trained).
_ALPHA_BAND = (2.0, 6.0)


def safe_filename(name: Any) -> str:
    """``name`` as a file name: every character outside ``[A-Za-z0-9._-]`` becomes ``_``.

    Names that would be empty or all dots (``""``, ``"."``, ``".."``) get a leading ``_``.
    """
    text = _UNSAFE.sub("_", str(name))
    if not text.strip("."):
        text = "_" + text
    return text


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
    values = np.asarray(eigenvalues, dtype=np.float64).ravel()
    drawn = np.sort(values[np.isfinite(values) & (values > 0)])
    left_out = values.size - drawn.size

    alpha = _float(_field(fit, "alpha"))
    xmin = _float(_field(fit, "xmin"))
    fitted = fit is not None and math.isfinite(alpha) and math.isfinite(xmin) and xmin > 0

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    n_all = drawn.size
    if n_all:
        ccdf = (n_all - np.arange(n_all)) / n_all  # P(lambda >= x_i), ties included
        ax.loglog(drawn, ccdf, linestyle="none", marker="o", markersize=3, alpha=0.6,
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
        tail_fraction = float(np.mean(drawn >= xmin)) if n_all else 1.0
        if tail_fraction <= 0:
            tail_fraction = 1.0 / max(n_all, 1)
        xs = np.geomspace(xmin, xmax, 200)
        ys = tail_fraction * (xs / xmin) ** (1.0 - alpha)
        label = f"power law fit: alpha = {alpha:.3f}, D = {d_stat:.3f}"
        if spikes is not None and not (isinstance(spikes, float) and math.isnan(spikes)):
            label += f"\n{int(spikes)} eigenvalues in the tail"
        ax.loglog(xs, ys, color="tab:red", linewidth=2, label=label)
        ax.axvline(xmin, color="tab:red", linestyle="--", linewidth=1,
                   label=f"xmin = {xmin:.4g}")
        ax.set_title(title)
    else:
        why = reason or "no fit"
        ax.set_title(f"{title}\nnot fitted: {why}")

    ax.set_xlabel("eigenvalue lambda (squared singular value of W)")
    ax.set_ylabel("P(eigenvalue >= lambda)")
    if left_out:
        ax.text(0.01, 0.01, f"{left_out} eigenvalues <= 0 or not finite not shown",
                transform=ax.transAxes, fontsize=8, color="0.4")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left" if not left_out else "center left", fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_randomization(eigenvalues, randomized, shape: tuple[int, int], path: str | os.PathLike, *,
                       title: str) -> Path:
    """The randomization check of one matrix (seed 001, Figure 1) on one figure: the ESD, the ESD
    of the same matrix with its entries shuffled, and the Marchenko-Pastur density fitted to the
    ESD's bulk (:func:`zooscope.random_matrix.fit_marchenko_pastur`, ``shape`` = (N, M)).

    Densities of log10(lambda), with shared bins: ESDs span decades, and on a log axis the heavy
    tail, the MP bulk and the shuffled spectrum are all visible at once. The MP density is
    transformed to the same variable, p(log10 x) = p(x) x ln 10.
    """
    from zooscope.random_matrix import esd_distance, fit_marchenko_pastur, mp_density

    values = np.asarray(eigenvalues, dtype=np.float64).ravel()
    rand = np.asarray(randomized, dtype=np.float64).ravel()
    mp, mp_rand = fit_marchenko_pastur(values, shape), fit_marchenko_pastur(rand, shape)
    logs, rand_logs = np.log10(values[values > 0]), np.log10(rand[rand > 0])
    bins = np.linspace(min(logs.min(), rand_logs.min()), max(logs.max(), rand_logs.max()), 61)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
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
    ax.set_xlabel("log10 eigenvalue")
    ax.set_ylabel("density of log10 eigenvalue")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


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


def plot_correlation_flow(
    layers_by_model: Mapping[str, pd.DataFrame],
    path: str | os.PathLike,
    *,
    series: str,
) -> Path:
    """Correlation flow of one series: layer alpha against layer depth, one line per model.

    Each DataFrame needs the columns ``depth``, ``alpha`` and ``status``. Only rows with
    ``status == "ok"`` are used; rows that share a depth (the slices of a Conv2D layer) are
    averaged, so each model has one alpha per depth. The x axis is the depth index as given.
    Models are drawn and listed in the legend in sorted order; a model without fitted layers is
    still listed, marked "(no fitted layers)". Dotted lines mark alpha = 2 and alpha = 6, the
    over-/under-trained thresholds.
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
            ok = frame.loc[frame["status"].astype(str) == "ok", ["depth", "alpha"]]
            depth = pd.to_numeric(ok["depth"], errors="coerce")
            alpha = pd.to_numeric(ok["alpha"], errors="coerce")
            per_depth = (
                pd.DataFrame({"depth": depth, "alpha": alpha})
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

    for level in _ALPHA_BAND:
        ax.axhline(level, color="0.5", linestyle=":", linewidth=1)
    ax.set_xlabel("layer depth (index)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("alpha (power-law exponent of the layer ESD)")
    ax.set_title(f"Correlation flow: {series}")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ncol = 1 if len(handles) <= 16 else 2
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, ncol=ncol,
                  frameon=False)
    fig.tight_layout()
    return _save(fig, path)


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
) -> Path:
    """Scatter of accuracy against one metric for the models of one series.

    Each point is labelled with its model name. The OLS line from ``regression_row`` (a row of
    :func:`zooscope.regression.regress`: a mapping, pandas row or object with ``slope,
    intercept, r2, kendall_tau, n``) is drawn over the range of the metric, with R^2 and
    Kendall tau in the legend; when its statistics are NaN (n < 3, constant metric) or the row
    is None, only the points are drawn and the title says why. Rows where the metric or the
    accuracy is missing or not finite are not drawn.
    """
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
        xs = np.array([lo - pad, hi + pad])
        ax.plot(xs, intercept + slope * xs, color="tab:red", linewidth=1.5,
                label=f"OLS: accuracy = {slope:.4g} * {metric} + {intercept:.4g}\n"
                      f"R^2 = {r2:.3f}, Kendall tau = {tau:.3f}")
        title += f"\nR^2 = {r2:.3f}, Kendall tau = {tau:.3f}"
    else:
        title += "\nno fit (fewer than 3 models or constant metric)"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(metric)
    ax.set_ylabel("reported accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.margins(x=0.12, y=0.1)  # room for the point labels
    fig.tight_layout()
    return _save(fig, path)


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


def _matrix_label(layer: str, slice_label: str) -> str:
    return f"{layer}.slice{slice_label.replace(',', '-')}" if slice_label else layer


def plot_model_esds(index: dict, layers: pd.DataFrame, *, esd_dir, out_dir, model: str) -> list[Path]:
    """The ESD plot of every matrix of one model that has eigenvalues: ``out_dir/{layer}[.sliceI-J].png``,
    and for fitted matrices with shuffled spectra (config ``randomize``) the randomization check
    ``{layer}[.sliceI-J].rand.png`` (:func:`plot_randomization`).

    ``index`` is the esd stage's index, ``layers`` the fit stage's layers.tsv; rows that were
    skipped are drawn without a fit, with their reason in the title.
    """
    from zooscope.esd import load_layer_eigenvalues

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = {record["name"]: record for record in index["layers"] if record["status"] == "ok"}
    spectra: dict[str, np.ndarray] = {}
    randomized: dict[str, np.ndarray] = {}
    written = []
    for row in layers.itertuples(index=False):
        record = records.get(row.layer)
        if record is None or not np.isfinite(row.lambda_max):
            continue
        if row.layer not in spectra:
            spectra[row.layer] = load_layer_eigenvalues(esd_dir, record)
            if record.get("rand_file"):
                randomized[row.layer] = load_layer_eigenvalues(esd_dir, record, randomized=True)
        position = record["slices"].index(row.slice)
        values = spectra[row.layer][position]
        label = _matrix_label(row.layer, row.slice)
        title = f"{model}: {label} ({row.type}, {row.N} x {row.M})"
        fitted = row.status == "ok"
        written.append(plot_esd(values, row if fitted else None, out_dir / f"{safe_filename(label)}.png",
                                title=title, reason=None if fitted else row.reason))
        if fitted and record.get("rand_file"):
            written.append(plot_randomization(values, randomized[row.layer][position], (row.N, row.M),
                                              out_dir / f"{safe_filename(label)}.rand.png",
                                              title=f"{title}: randomization check"))
    return written


def plot_series(*, series: str, layers_by_model: Mapping[str, pd.DataFrame], models: pd.DataFrame,
                regressions: pd.DataFrame, out_dir) -> list[Path]:
    """All figures of one series into ``out_dir``: ``correlation_flow.png`` and ``{metric}.png``
    (each metric against accuracy, with the fitted line)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_correlation_flow(layers_by_model, out_dir / "correlation_flow.png", series=series)]
    for row in regressions[regressions["series"].astype(str) == str(series)].itertuples(index=False):
        written.append(plot_metric_vs_accuracy(models, row, out_dir / f"{safe_filename(row.metric)}.png",
                                               series=series, metric=row.metric))
    return written
