"""The label-noise ladder of a series (zooscope.analysis.discrimination)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from zooscope.report.figures import plt, save_figure


# --------------------------------------------------------------------------------------------
# Good versus bad (zooscope.analysis.discrimination)


def plot_noise_ladder(models: pd.DataFrame, noise: Mapping[str, float], discrimination: pd.DataFrame,
                      path: str | os.PathLike, *, series: str) -> Path:
    """Write :func:`noise_ladder_figure` to ``path``."""
    return save_figure(noise_ladder_figure(models, noise, discrimination, series=series), path)


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
