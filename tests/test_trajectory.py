"""Training trajectories (zooscope.analysis.trajectory) and their figures (zooscope.report.trajectory_plots):
the settling step against hand-worked runs, the layer-by-step alpha matrix against averages taken
here, and what the figures draw, read back from their artists."""
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from zooscope.analysis.trajectory import (
    SPREAD_BOOTSTRAP, SPREAD_TOLERANCE, TOLERANCE, alpha_by_depth, settling, trajectory_table,
)
from zooscope.report.trajectory_plots import alpha_heatmap_figure, metrics_vs_step_figure, plot_trajectory


def test_settling_is_the_first_step_after_the_last_checkpoint_outside_the_band():
    # final 2.0, band 2.0 +- 0.1: 3.0 at step 2 is the last one outside (1.95 and 2.05 are inside)
    result = settling([1, 2, 3, 4, 5], [5.0, 3.0, 1.95, 2.05, 2.0])
    assert (result.kind, result.lo, result.hi, result.step) == (SPREAD_TOLERANCE, 2.0 - 2.0 * TOLERANCE,
                                                                2.0 + 2.0 * TOLERANCE, 3.0)
    # a value inside early, out again later: it settles only after the excursion
    assert settling([0, 10, 20, 30], [2.0, 9.0, 2.0, 2.0]).step == 20.0
    # inside from the start
    assert settling([1, 2], [2.0, 2.0]).step == 1.0
    # a missing value counts as outside
    assert settling([1, 2, 3], [2.0, math.nan, 2.0]).step == 3.0


def test_settling_uses_the_final_bootstrap_interval_widened_to_the_final_value():
    # interval [2.5, 4.0] around final 2.4: widened to [2.4, 4.0]; 3.9 inside, 4.5 outside
    result = settling([1, 2, 3, 4], [4.5, 3.9, 2.45, 2.4], lo=2.5, hi=4.0)
    assert (result.kind, result.lo, result.hi, result.step) == (SPREAD_BOOTSTRAP, 2.4, 4.0, 2.0)
    # the same values under the 5 % band instead: 2.45 is inside 2.4 +- 0.12, 3.9 is not
    assert settling([1, 2, 3, 4], [4.5, 3.9, 2.45, 2.4]).step == 3.0
    with pytest.raises(ValueError, match="increasing step"):
        settling([2, 1], [1.0, 1.0])


def checkpoints():
    return pd.DataFrame({
        "model": ["c0", "c1", "c2"], "series": "run", "step": [0.0, 5.0, 10.0],
        "accuracy": [10.0, 90.0, 92.0],
        "alpha": [8.0, 3.1, 3.0], "alpha_lo": [7.0, 2.9, 2.8], "alpha_hi": [9.0, 3.3, 3.2],
        "stable_rank": [50.0, 20.0, 10.0],
    })


def test_trajectory_table_has_a_row_per_metric_with_its_spread():
    table = trajectory_table("run", checkpoints())
    rows = table.set_index("metric")
    assert list(table["metric"]) == ["accuracy", "alpha", "stable_rank"]
    # accuracy: final 92 +- 4.6 holds 90, not 10
    assert rows.loc["accuracy", "settled_step"] == 5.0 and rows.loc["accuracy", "spread"] == SPREAD_TOLERANCE
    # alpha: the final interval [2.8, 3.2] holds 3.1
    assert (rows.loc["alpha", "spread_lo"], rows.loc["alpha", "spread_hi"], rows.loc["alpha", "settled_step"]) == (2.8, 3.2, 5.0)
    assert rows.loc["alpha", "settled_fraction"] == 0.5
    # stable_rank: only the final checkpoint is within 10 +- 0.5
    assert rows.loc["stable_rank", "settled_step"] == 10.0 and rows.loc["stable_rank", "settled_fraction"] == 1.0
    assert set(table["num_checkpoints"]) == {3} and set(table["first_step"]) == {0.0}


def layers(alphas, status=None):
    """A layers.tsv: fc1 (depth 0), conv (depth 1, two slices), fc2 (depth 2)."""
    return pd.DataFrame({"layer": ["fc1", "conv", "conv", "fc2"], "slice": ["", "0", "1", ""],
                         "depth": [0, 1, 1, 2], "alpha": alphas, "status": status or ["ok"] * 4})


def test_alpha_by_depth_averages_slices_and_leaves_failed_fits_blank():
    data = alpha_by_depth({10.0: layers([2.0, 3.0, 5.0, 6.0], ["ok", "ok", "ok", "failed"]),
                           0.0: layers([7.0, 8.0, 9.0, 10.0])})
    assert data.layers == ["fc1", "conv", "fc2"] and data.steps == [0.0, 10.0]
    np.testing.assert_array_equal(data.alpha, [[7.0, 2.0], [8.5, 4.0], [10.0, np.nan]])


def test_metrics_vs_step_figure_draws_each_metric_its_band_and_its_settling_step():
    frame = checkpoints()
    table = trajectory_table("run", frame)
    fig = metrics_vs_step_figure(frame, table, series="run")
    try:
        axes = [ax for ax in fig.axes if ax.get_title()]
        assert [ax.get_title() for ax in axes] == ["accuracy", "alpha", "stable_rank"]
        alpha_ax = axes[1]
        line = alpha_ax.lines[0]
        np.testing.assert_array_equal(line.get_xdata(), [0.0, 5.0, 10.0])
        np.testing.assert_array_equal(line.get_ydata(), [8.0, 3.1, 3.0])
        (band,) = alpha_ax.patches
        ys = band.get_patch_transform().transform(band.get_path().vertices)[:, 1]  # data y of its corners
        assert (ys.min(), ys.max()) == pytest.approx((2.8, 3.2))
        vline = alpha_ax.lines[1]
        assert set(vline.get_xdata()) == {5.0}
    finally:
        plt.close(fig)


def test_alpha_heatmap_figure_draws_the_matrix_with_layers_and_steps(tmp_path):
    data = alpha_by_depth({0.0: layers([7.0, 8.0, 9.0, 10.0]), 10.0: layers([2.0, 3.0, 5.0, 6.0])})
    fig = alpha_heatmap_figure(data, series="run")
    try:
        ax = fig.axes[0]
        (image,) = ax.images
        np.testing.assert_array_equal(np.ma.filled(image.get_array(), np.nan), [[7.0, 2.0], [8.5, 4.0], [10.0, 6.0]])
        assert [t.get_text() for t in ax.get_yticklabels()] == ["fc1", "conv", "fc2"]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "10"]
    finally:
        plt.close(fig)
    written = plot_trajectory(checkpoints(), trajectory_table("run", checkpoints()), data, tmp_path / "out", series="run")
    assert [path.name for path in written] == ["metrics_vs_step.png", "alpha_heatmap.png"]
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in written)
