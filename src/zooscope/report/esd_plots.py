"""Figures of one model's layers: each ESD with its power-law fit, and the randomization check."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from zooscope.io import safe_filename
from zooscope.report.figures import as_float, ccdf_points, field, layout_grid, panel_grid, power_law_line, save_figure


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
    return save_figure(esd_figure(panels, title=title), path)


def esd_figure(panels: list[tuple], *, title: str | None = None):
    """The Figure of :func:`plot_esd_grid`: one panel per ESD, e.g. the slices of a Conv2D layer.
    ``panels`` holds (eigenvalues, fit, panel title, reason) tuples."""
    fig, axes = panel_grid(len(panels), title)
    for ax, (eigenvalues, fit, panel_title, reason) in zip(axes, panels):
        draw_esd(ax, eigenvalues, fit, title=panel_title, reason=reason, small=len(panels) > 1)
    return layout_grid(fig, single=len(panels) == 1)




def draw_esd(ax, eigenvalues, fit, *, title: str, reason: str | None = None, small: bool = False) -> None:
    """The ESD of :func:`plot_esd` on the axes ``ax``; ``small`` for a panel of a grid."""
    drawn, ccdf = ccdf_points(eigenvalues)
    left_out = np.size(eigenvalues) - drawn.size
    fontsize = 6 if small else 8

    alpha = as_float(field(fit, "alpha"))
    xmin = as_float(field(fit, "xmin"))
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
        xmax = as_float(field(fit, "xmax"))
        if not (math.isfinite(xmax) and xmax > xmin):
            xmax = float(drawn[-1]) if n_all and drawn[-1] > xmin else xmin * 10.0
        d_stat = as_float(field(fit, "D"))
        spikes = field(fit, "num_pl_spikes", None)
        xs, ys = power_law_line(drawn, alpha, xmin, xmax)
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
    return save_figure(randomization_figure(panels, title=title), path)


def randomization_figure(panels: list[tuple], *, title: str | None = None):
    """The Figure of :func:`plot_randomization_grid`. ``panels`` holds (eigenvalues, randomized,
    shape, panel title) tuples."""
    fig, axes = panel_grid(len(panels), title)
    for ax, (eigenvalues, randomized, shape, panel_title) in zip(axes, panels):
        draw_randomization(ax, eigenvalues, randomized, shape, title=panel_title, small=len(panels) > 1)
    return layout_grid(fig, single=len(panels) == 1)


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



def plot_model_esds(index: dict, layers: pd.DataFrame, *, esd_dir, out_dir, model: str) -> list[Path]:
    """The ESD figure of every layer of one model that has eigenvalues, ``out_dir/{layer}.png``,
    and for its fitted matrices with shuffled spectra (config ``randomize``) the randomization
    check ``{layer}.rand.png`` (:func:`model_esd_figures`), written one at a time."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [save_figure(fig, out_dir / name) for name, fig in model_esd_figures(index, layers, esd_dir=esd_dir, model=model)]


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
