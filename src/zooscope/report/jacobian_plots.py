"""The Jacobian stage's figures of a series (zooscope.jacobian.compute): the models side by side."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from zooscope.report.figures import as_float, ccdf_points, field, line_style, plt, power_law_line, save_figure


# --------------------------------------------------------------------------------------------
# The Jacobian stage (zooscope.jacobian.compute): the models of one series side by side


def plot_jacobian_esd_grid(spectra_by_model: Mapping[str, Mapping[str, np.ndarray]],
                           layers_by_model: Mapping[str, pd.DataFrame], path: str | os.PathLike, *,
                           titles: Mapping[str, str], series: str) -> Path:
    """Write :func:`jacobian_esd_figure` to ``path``."""
    return save_figure(jacobian_esd_figure(spectra_by_model, layers_by_model, titles=titles, series=series), path)


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
            drawn, ccdf = ccdf_points(spectra_by_model[model].get(f"gram/{layer}", []))
            ax.set_xscale("log")
            ax.set_yscale("log")
            if drawn.size:
                ax.plot(drawn, ccdf, linestyle="none", marker="o", markersize=2, alpha=0.6, color="tab:blue")
            row = rows.loc[layer] if layer in rows.index else None
            alpha, xmin = as_float(field(row, "alpha")), as_float(field(row, "xmin"))
            text = f"rank {as_float(field(row, 'rank')):.0f}, eff. {as_float(field(row, 'effective_rank')):.1f}"
            if drawn.size and math.isfinite(alpha) and math.isfinite(xmin) and xmin > 0:
                xs, ys = power_law_line(drawn, alpha, xmin, float(drawn[-1]))
                ax.plot(xs, ys, color="tab:red", linewidth=1.5)
                ax.axvline(xmin, color="tab:red", linestyle="--", linewidth=0.8)
                text = f"alpha {alpha:.2f}, D {as_float(field(row, 'D')):.2f}\n" + text
            elif row is not None:
                text = f"not fitted: {field(row, 'reason', '')}\n" + text
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
    return save_figure(jacobian_overlay_figure(spectra_by_model, keys, titles=titles, title=title, xlabel=xlabel), path)


def jacobian_overlay_figure(spectra_by_model: Mapping[str, Mapping[str, np.ndarray]], keys: list[str], *,
                            titles: Mapping[str, str], title: str, xlabel: str):
    """One panel per key (e.g. "diag/{layer}", "io"), the CCDF of every model's values overlaid,
    so that the tails of the models can be compared on the same axes."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for k, (model, spectra) in enumerate(spectra_by_model.items()):
            drawn, ccdf = ccdf_points(spectra.get(key, []))
            if drawn.size:
                ax.loglog(drawn, ccdf, linewidth=1.2, label=titles.get(model, model).replace("\n", ", "),
                          **{k2: v for k2, v in line_style(k).items() if k2 == "color"})
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
    return save_figure(hessian_figure(spectra_by_model, titles=titles, series=series), path)


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
