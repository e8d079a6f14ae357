"""What the figure modules share (zooscope.report.esd_plots, series_plots, discrimination_plots,
jacobian_plots, trajectory_plots): saving, panel grids, line styles, the CCDF of a spectrum.

Each figure is built by a ``*_figure`` function that returns the matplotlib Figure (so that what
is drawn can be read back from its artists, as the tests do), and written by the ``plot_*``
function of the same name: one PNG (or several), atomically through
:func:`zooscope.io.atomic_path`, closing the figure. The Agg backend is selected before pyplot is
imported (here, the one place that imports it), so plotting works on cluster nodes without a display.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from zooscope.io import atomic_path  # noqa: E402


DPI = 110


def save_figure(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            # The temporary name ends in ".part": give the format explicitly.
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return path


def field(obj: Any, name: str, default: Any = math.nan) -> Any:
    """Attribute of a fit/result object, or key of a mapping/pandas row."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    if isinstance(obj, pd.Series):
        return obj.get(name, default)
    return getattr(obj, name, default)


def as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def ccdf_points(values) -> tuple[np.ndarray, np.ndarray]:
    """The positive, finite ``values`` sorted, and P(value >= x) at each, ties included (the CCDF
    of :func:`plot_esd`)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    drawn = np.sort(values[np.isfinite(values) & (values > 0)])
    return drawn, (drawn.size - np.arange(drawn.size)) / max(drawn.size, 1)


def power_law_line(drawn: np.ndarray, alpha: float, xmin: float, xmax: float) -> tuple[np.ndarray, np.ndarray]:
    """The fitted power law over [xmin, xmax] on the CCDF of ``drawn``, anchored where the tail
    begins: (share of values >= xmin) * (x / xmin)^(1 - alpha) (:func:`plot_esd`)."""
    share = float(np.mean(drawn >= xmin)) if drawn.size else 1.0
    xs = np.geomspace(xmin, max(xmax, xmin * (1 + 1e-9)), 200)
    return xs, max(share, 1.0 / max(drawn.size, 1)) * (xs / xmin) ** (1.0 - alpha)


def panel_grid(panels: int, title: str | None):
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


def layout_grid(fig, *, single: bool):
    if single:
        fig.tight_layout()
    else:  # tight_layout over a grid of log axes costs more than the drawing
        fig.subplots_adjust(left=0.04, right=0.99, bottom=0.04, top=0.93, wspace=0.22, hspace=0.4)
    return fig


def line_style(i: int) -> dict[str, Any]:
    colors = plt.get_cmap("tab10").colors
    styles = ("-", "--", ":", "-.")
    markers = ("o", "s", "^", "D", "v")
    return {
        "color": colors[i % len(colors)],
        "linestyle": styles[(i // len(colors)) % len(styles)],
        "marker": markers[(i // len(colors)) % len(markers)],
    }
