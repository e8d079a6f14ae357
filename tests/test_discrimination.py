import math

import pandas as pd
import pytest

from zooscope.analysis.discrimination import (
    DISCRIMINATION_COLUMNS, discrimination, noise_levels, separating_metrics,
)


def ladder():
    # four rungs of noise; "up" grows with noise, "down" shrinks, "swap" exchanges the middle two
    # rungs (5 of 6 pairs concordant: tau = (5 - 1) / 6), "flat" is constant.
    return pd.DataFrame({
        "model": ["n0", "n25", "n50", "n100", "w1", "w2", "solo"],
        "series": ["noise"] * 4 + ["width"] * 2 + ["other"],
        "accuracy": [97.0, 90.0, 80.0, 10.0, 95.0, 96.0, 50.0],
        "num_fitted": [3] * 7,
        "up": [1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0],
        "down": [4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0],
        "swap": [1.0, 3.0, 2.0, 4.0, 1.0, 2.0, 3.0],
        "flat": [5.0] * 7,
    })


NOISE = {"n0": 0.0, "n25": 0.25, "n50": 0.5, "n100": 1.0, "solo": 0.3}


def test_kendall_tau_against_noise_by_hand():
    table = discrimination(ladder(), NOISE).set_index("metric")
    assert list(table.columns) == [c for c in DISCRIMINATION_COLUMNS if c != "metric"]
    # only "noise" has two models with a noise level ("solo" is alone, "width" has none)
    assert set(table["series"]) == {"noise"}
    assert table.loc["up", "kendall_tau"] == pytest.approx(1.0)
    assert table.loc["down", "kendall_tau"] == pytest.approx(-1.0)
    assert table.loc["swap", "kendall_tau"] == pytest.approx(4 / 6)
    # exact two-sided p-value of a perfect order of 4: 2 of the 4! = 24 permutations
    assert table.loc["up", "p_value"] == pytest.approx(2 / 24)
    assert math.isnan(table.loc["flat", "kendall_tau"])
    assert table["separates"].to_dict() == {"up": True, "down": True, "swap": False,
                                            "flat": False}
    assert table.loc["up", "direction"] == "grows with noise"
    assert table.loc["down", "direction"] == "shrinks with noise"
    assert table.loc["up", "n"] == 4 and table.loc["up", "noise_max"] == 1.0


def test_missing_values_are_left_out_of_a_metric():
    models = ladder()
    models.loc[models["model"] == "n50", "swap"] = float("nan")  # the swapped rung is gone
    row = discrimination(models, NOISE, ["swap"]).iloc[0]
    assert row["n"] == 3 and row["kendall_tau"] == pytest.approx(1.0)


def test_metric_columns_are_the_numeric_measurements():
    from zooscope.analysis.aggregate import metric_columns

    models = ladder().assign(accuracy_source="digits", jac_alpha=1.0, num_layers=3, flagged=True)
    assert metric_columns(models) == ["up", "down", "swap", "flat", "jac_alpha"]
    # the default metrics of the discrimination table and of the regressions are these
    assert list(discrimination(models, NOISE)["metric"].unique()) == ["up", "down", "swap", "flat", "jac_alpha"]


def test_noise_levels_come_from_the_meta_options():
    metas = [{"model": "a", "options": {"label_noise": 0.5, "width": 8}}, {"model": "b", "options": {}},
             {"model": "c"}]
    assert noise_levels(metas) == {"a": 0.5}


def test_separating_metrics_sorts_by_strength():
    table = discrimination(ladder(), NOISE, ["swap", "flat", "down", "up"])
    assert separating_metrics(table, "noise") == (["down", "up"], ["swap"], ["flat"])


def test_unknown_metric_is_named():
    with pytest.raises(ValueError, match="nonexistent"):
        discrimination(ladder(), NOISE, ["nonexistent"])
