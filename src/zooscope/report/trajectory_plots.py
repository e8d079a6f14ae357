"""Figures of a training trajectory (zooscope.analysis.trajectory): every metric against step, and
the layer-by-step heatmap of alpha."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from zooscope.analysis.trajectory import AlphaByDepth
from zooscope.report.figures import layout_grid, panel_grid, plt, save_figure


def metrics_vs_step_figure(checkpoints: pd.DataFrame, table: pd.DataFrame, *, series: str):
    """One panel per metric of ``table`` (trajectories.tsv's rows of the series, in its order): the
    metric of each checkpoint against its step (a line with markers), the final value's spread
    as a shaded band and the settling step as a dashed vertical line."""
    fig, axes = panel_grid(len(table), f"{series}: metrics against training step")
    steps = checkpoints["step"].to_numpy(dtype=float)
    for ax, row in zip(axes, table.itertuples(index=False)):
        ax.plot(steps, checkpoints[row.metric].to_numpy(dtype=float), marker="o", markersize=3, label=row.metric)
        if math.isfinite(row.spread_lo):
            ax.axhspan(row.spread_lo, row.spread_hi, color="tab:green", alpha=0.2, label=f"final spread ({row.spread})")
        if math.isfinite(row.settled_step):
            ax.axvline(row.settled_step, color="black", linestyle="--", linewidth=1,
                       label=f"settled at step {row.settled_step:g}")
        ax.set_title(row.metric, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5)
        ax.grid(True, alpha=0.3)
    return layout_grid(fig, single=len(table) == 1)


def alpha_heatmap_figure(data: AlphaByDepth, *, series: str):
    """The layer-by-step matrix of alpha: depth down the rows (the first layer at the top), one
    column per checkpoint (labelled by its step); missing fits are blank."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(data.steps) + 2.5), max(3.0, 0.35 * len(data.layers) + 1.5)))
    image = ax.imshow(np.ma.masked_invalid(data.alpha), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(data.steps)), [f"{step:g}" for step in data.steps], fontsize=7)
    ax.set_yticks(range(len(data.layers)), data.layers, fontsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel("layer (depth order)")
    ax.set_title(f"{series}: alpha by layer and step")
    fig.colorbar(image, ax=ax, label="alpha")
    fig.tight_layout()
    return fig


def plot_trajectory(checkpoints: pd.DataFrame, table: pd.DataFrame, alpha: AlphaByDepth, out_dir: str | os.PathLike,
                    *, series: str) -> list[Path]:
    """Both figures of a trajectory into ``out_dir``: ``metrics_vs_step.png`` and ``alpha_heatmap.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [save_figure(metrics_vs_step_figure(checkpoints, table, series=series), out_dir / "metrics_vs_step.png"),
            save_figure(alpha_heatmap_figure(alpha, series=series), out_dir / "alpha_heatmap.png")]
