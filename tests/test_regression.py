"""Per-series regressions, checked against independent computations."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from zooscope.io import write_tsv
from zooscope.analysis.regression import (
    METRIC_COLUMNS,
    REGRESSION_COLUMNS,
    ModelsTableError,
    read_models_table,
    regress,
)

STATS = ["slope", "intercept", "r2", "rmse", "pearson_r", "spearman_rho", "kendall_tau"]


def reference(x, y) -> dict:
    """Independent computation: closed-form OLS, numpy.polyfit, scipy.stats."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    slope = np.cov(x, y, ddof=1)[0, 1] / np.var(x, ddof=1)
    intercept = y.mean() - slope * x.mean()
    p_slope, p_intercept = np.polyfit(x, y, 1)
    assert slope == pytest.approx(p_slope, rel=1e-9, abs=1e-12)
    assert intercept == pytest.approx(p_intercept, rel=1e-9, abs=1e-12)
    residuals = y - (intercept + slope * x)
    r = stats.pearsonr(x, y).statistic
    return {
        "n": x.size,
        "slope": slope,
        "intercept": intercept,
        "r2": r**2,
        "rmse": math.sqrt(np.mean(residuals**2)),
        "pearson_r": r,
        "spearman_rho": stats.spearmanr(x, y).statistic,
        "kendall_tau": stats.kendalltau(x, y).statistic,
    }


def assert_row(row, expected, *, rel=1e-9, abs_=1e-10):
    assert int(row["n"]) == expected["n"]
    for key in STATS:
        assert row[key] == pytest.approx(expected[key], rel=rel, abs=abs_), key


def random_zoo(seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for series, size in [("VGG", 8), ("ResNet", 6), ("DenseNet", 5)]:
        alpha = rng.uniform(2.5, 5.0, size)
        log_norm = rng.normal(2.0, 0.5, size)
        accuracy = 80 - 3.0 * alpha + rng.normal(0, 1.0, size)
        frames.append(pd.DataFrame({
            "model": [f"{series.lower()}{i}" for i in range(size)],
            "series": series,
            "accuracy": accuracy,
            "alpha": alpha,
            "log_norm": log_norm,
            "num_layers": rng.integers(10, 50, size),
        }))
    return pd.concat(frames, ignore_index=True)


def test_metric_columns_order():
    assert METRIC_COLUMNS == (
        "alpha", "alpha_weighted", "log_alpha_norm", "log_norm", "log_spectral_norm",
        "stable_rank", "D", "sigma", "num_pl_spikes", "lambda_max", "mp_softrank", "num_spikes",
        "rand_distance", "num_traps",
    )


def test_matches_independent_computation():
    zoo = random_zoo()
    out = regress(zoo, ["alpha", "log_norm"])
    assert list(out.columns) == list(REGRESSION_COLUMNS)
    assert list(zip(out["series"], out["metric"])) == [
        (s, m) for s in ["DenseNet", "ResNet", "VGG"] for m in ["alpha", "log_norm"]
    ]
    for _, row in out.iterrows():
        sub = zoo[zoo["series"] == row["series"]]
        assert_row(row, reference(sub[row["metric"]], sub["accuracy"]))
    assert out["n"].dtype == np.int64


def test_the_fit_is_the_least_squares_line_with_its_r2_and_rmse():
    """zooscope's slope, intercept, R^2 and RMSE against the least-squares solution of the design
    matrix [1, x] (numpy's lstsq) and their definitions: R^2 = 1 - SS_res / SS_tot,
    RMSE = sqrt(SS_res / n)."""
    zoo = random_zoo(3)
    out = regress(zoo, ["alpha"]).set_index("series")
    assert sorted(out.index) == ["DenseNet", "ResNet", "VGG"]
    for series, sub in zoo.groupby("series"):
        x, y = sub["alpha"].to_numpy(), sub["accuracy"].to_numpy()
        (intercept, slope), (ss_res,), _, _ = np.linalg.lstsq(np.column_stack([np.ones_like(x), x]), y, rcond=None)
        ss_tot = np.sum((y - y.mean()) ** 2)
        row = out.loc[series]
        assert row["slope"] == pytest.approx(slope, rel=1e-9)
        assert row["intercept"] == pytest.approx(intercept, rel=1e-9)
        assert row["r2"] == pytest.approx(1 - ss_res / ss_tot, rel=1e-9)
        assert row["rmse"] == pytest.approx(math.sqrt(ss_res / x.size), rel=1e-9)


def test_default_metrics_are_numeric_non_bookkeeping_columns_in_table_order():
    zoo = random_zoo()
    zoo["source"] = "torchvision"
    zoo["num_fitted"] = 3
    zoo["accuracy_source"] = np.nan  # an empty text column read back from a TSV
    zoo = zoo[["model", "log_norm", "series", "source", "accuracy", "num_fitted", "alpha",
               "accuracy_source", "num_layers"]]
    out = regress(zoo)
    assert list(out["metric"].unique()) == ["log_norm", "alpha"]
    # Bookkeeping columns can still be asked for by name.
    assert list(regress(zoo, ["num_layers"])["metric"].unique()) == ["num_layers"]


def test_exact_line():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    zoo = pd.DataFrame({"model": list("abcde"), "series": "s", "accuracy": 2.5 * x + 1.0, "m": x})
    row = regress(zoo, ["m"]).iloc[0]
    assert row["slope"] == pytest.approx(2.5)
    assert row["intercept"] == pytest.approx(1.0)
    assert row["r2"] == pytest.approx(1.0)
    assert row["rmse"] == pytest.approx(0.0, abs=1e-12)
    assert row["pearson_r"] == pytest.approx(1.0)
    assert row["spearman_rho"] == pytest.approx(1.0)
    assert row["kendall_tau"] == pytest.approx(1.0)


def test_negative_slope_signed_correlations():
    rng = np.random.default_rng(7)
    x = np.linspace(2, 6, 12)
    y = 90 - 4 * x + rng.normal(0, 0.5, x.size)
    zoo = pd.DataFrame({"model": [f"m{i}" for i in range(12)], "series": "s",
                        "accuracy": y, "alpha": x})
    row = regress(zoo, ["alpha"]).iloc[0]
    assert row["slope"] < 0
    assert row["pearson_r"] < 0 and row["spearman_rho"] < 0 and row["kendall_tau"] < 0
    assert_row(row, reference(x, y))


def test_kendall_is_tau_b_with_ties():
    x = np.array([1, 1, 2, 2, 3, 4, 4, 5], dtype=float)
    y = np.array([3, 2, 4, 4, 5, 5, 7, 6], dtype=float)
    zoo = pd.DataFrame({"model": list("abcdefgh"), "series": "s", "accuracy": y, "m": x})
    row = regress(zoo, ["m"]).iloc[0]
    assert row["kendall_tau"] == pytest.approx(stats.kendalltau(x, y, variant="b").statistic)


def test_nan_rows_dropped_and_counted():
    zoo = random_zoo(1)
    zoo.loc[[0, 3], "alpha"] = np.nan
    zoo.loc[5, "accuracy"] = np.nan
    zoo.loc[6, "log_norm"] = np.inf  # not finite: left out like NaN
    out = regress(zoo, ["alpha", "log_norm"])
    vgg = zoo[zoo["series"] == "VGG"]
    for metric, expected_n in [("alpha", 8 - 3), ("log_norm", 8 - 2)]:
        row = out[(out["series"] == "VGG") & (out["metric"] == metric)].iloc[0]
        keep = np.isfinite(vgg[metric]) & np.isfinite(vgg["accuracy"])
        assert int(row["n"]) == expected_n == int(keep.sum())
        assert_row(row, reference(vgg.loc[keep, metric], vgg.loc[keep, "accuracy"]))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_fewer_than_three_rows_gives_nan(n):
    zoo = pd.DataFrame({"model": [f"m{i}" for i in range(4)], "series": "s",
                        "accuracy": [70.0, 71.0, 72.0, 73.0], "m": [1.0, 2.0, 3.0, 4.0]})
    zoo.loc[n:, "m"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = regress(zoo, ["m"]).iloc[0]
    assert int(row["n"]) == n
    assert all(math.isnan(row[k]) for k in STATS)


def test_constant_metric_gives_nan_without_warnings():
    zoo = pd.DataFrame({"model": list("abcd"), "series": "s",
                        "accuracy": [70.0, 71.0, 72.5, 73.0], "m": [3.0] * 4})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = regress(zoo, ["m"]).iloc[0]
    assert int(row["n"]) == 4
    assert all(math.isnan(row[k]) for k in STATS)


def test_constant_accuracy_flat_line_nan_correlations():
    zoo = pd.DataFrame({"model": list("abcd"), "series": "s",
                        "accuracy": [70.0] * 4, "m": [1.0, 2.0, 3.0, 5.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = regress(zoo, ["m"]).iloc[0]
    assert row["slope"] == pytest.approx(0.0, abs=1e-12)
    assert row["intercept"] == pytest.approx(70.0)
    assert row["rmse"] == pytest.approx(0.0, abs=1e-12)
    for key in ["r2", "pearson_r", "spearman_rho", "kendall_tau"]:
        assert math.isnan(row[key])


@pytest.mark.parametrize("column", ["model", "series", "accuracy"])
def test_missing_required_column(column):
    zoo = random_zoo().drop(columns=[column])
    with pytest.raises(ValueError) as info:
        regress(zoo, ["alpha"])
    message = str(info.value)
    assert repr(column) in message
    assert "'alpha'" in message  # lists the columns present


def test_missing_metric_names_it_and_lists_present():
    with pytest.raises(ValueError) as info:
        regress(random_zoo(), ["alpha", "log_spectral_norm"])
    assert "'log_spectral_norm'" in str(info.value)
    assert "'log_norm'" in str(info.value)


def test_non_numeric_metric_rejected():
    zoo = random_zoo()
    zoo["family"] = "cnn"
    with pytest.raises(ValueError, match="'family' is not numeric"):
        regress(zoo, ["family"])


def test_nullable_and_rows_without_series():
    zoo = random_zoo()
    zoo["alpha"] = zoo["alpha"].astype("Float64")
    zoo.loc[2, "alpha"] = pd.NA
    zoo.loc[len(zoo)] = {"model": "orphan", "series": None, "accuracy": 50.0, "alpha": 1.0,
                         "log_norm": 1.0, "num_layers": 3}
    out = regress(zoo, ["alpha"])
    assert list(out["series"]) == ["DenseNet", "ResNet", "VGG"]
    assert int(out.loc[out["series"] == "VGG", "n"].iloc[0]) == 7


def test_empty_table_gives_empty_result_with_columns():
    zoo = random_zoo().iloc[:0]
    out = regress(zoo, ["alpha"])
    assert list(out.columns) == list(REGRESSION_COLUMNS)
    assert out.empty


def test_deterministic_bytes(tmp_path):
    zoo = random_zoo(5)
    write_tsv(tmp_path / "a.tsv", regress(zoo))
    write_tsv(tmp_path / "b.tsv", regress(zoo.sample(frac=1.0, random_state=1)))
    a = (tmp_path / "a.tsv").read_bytes()
    assert a == (tmp_path / "b.tsv").read_bytes()
    assert a.splitlines()[0] == "\t".join(REGRESSION_COLUMNS).encode()


def test_read_models_table_tsv_csv_and_errors(tmp_path):
    zoo = random_zoo()
    zoo.to_csv(tmp_path / "zoo.tsv", sep="\t", index=False)
    zoo.to_csv(tmp_path / "zoo.csv", index=False)
    for name in ["zoo.tsv", "zoo.csv"]:
        back = read_models_table(tmp_path / name)
        pd.testing.assert_frame_equal(regress(back), regress(zoo), check_exact=False, rtol=1e-12)

    with pytest.raises(FileNotFoundError, match="nothere.tsv"):
        read_models_table(tmp_path / "nothere.tsv")
    zoo.drop(columns=["accuracy"]).to_csv(tmp_path / "noacc.tsv", sep="\t", index=False)
    with pytest.raises(ModelsTableError) as info:
        read_models_table(tmp_path / "noacc.tsv")
    assert "noacc.tsv" in str(info.value) and "'accuracy'" in str(info.value)
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ModelsTableError, match="empty.tsv"):
        read_models_table(tmp_path / "empty.tsv")


def test_numeric_looking_series_stays_text(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("model\tseries\taccuracy\tm\na\t1\t70\t1\nb\t1\t71\t2\nc\t1\t73\t3\n"
                    "d\tNA\t72\t2\n")
    out = regress(read_models_table(path), ["m"])
    assert list(out["series"]) == ["1"]


# -- uncertainty of the regressions (docs/statistics.md, "Regressions") ------------------------

from zooscope.analysis.regression import kendall_tau_b, ols_band, regress_one  # noqa: E402


def test_vectorised_kendall_tau_b_equals_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(50, 12)).astype(float)  # many ties
    y = rng.integers(0, 4, size=(50, 12)).astype(float)
    expected = [stats.kendalltau(a, b).statistic for a, b in zip(x, y)]
    np.testing.assert_allclose(kendall_tau_b(x, y), expected, rtol=1e-12)
    assert math.isnan(kendall_tau_b(np.ones(5), np.arange(5.0))[0])


def test_slope_interval_is_the_t_interval():
    rng = np.random.default_rng(1)
    x = rng.uniform(2, 5, 9)
    y = 70 - 4 * x + rng.normal(0, 1.5, 9)
    row = regress_one(x, y, level=0.9)
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (intercept + slope * x)
    se = math.sqrt(np.sum(residuals**2) / (9 - 2) / np.sum((x - x.mean()) ** 2))
    half = stats.t.ppf(0.95, 9 - 2) * se
    assert (row["slope_lo"], row["slope_hi"]) == pytest.approx((slope - half, slope + half), rel=1e-9)


def test_leave_one_out_ranges_and_the_most_influential_model():
    rng = np.random.default_rng(2)
    x = np.linspace(2.0, 5.0, 8)
    y = 80 - 3 * x + rng.normal(0, 0.3, 8)
    y[-1] += 6.0  # model h is far off the line at the end of the range: the most influential
    names = list("abcdefgh")
    row = regress_one(x, y, names)
    slopes = [np.polyfit(np.delete(x, i), np.delete(y, i), 1)[0] for i in range(8)]
    taus = [stats.kendalltau(np.delete(x, i), np.delete(y, i)).statistic for i in range(8)]
    assert (row["loo_slope_min"], row["loo_slope_max"]) == pytest.approx((min(slopes), max(slopes)), rel=1e-9)
    assert (row["loo_kendall_tau_min"], row["loo_kendall_tau_max"]) == pytest.approx((min(taus), max(taus)))
    assert row["most_influential"] == "h"
    design = np.column_stack([np.ones(8), x])
    leverage = np.diag(design @ np.linalg.inv(design.T @ design) @ design.T)
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (intercept + slope * x)
    mse = np.sum(residuals**2) / (8 - 2)
    cooks = residuals**2 / (2 * mse) * leverage / (1 - leverage) ** 2  # Cook's distance, closed form
    assert row["max_cooks_d"] == pytest.approx(cooks.max(), rel=1e-9)


def test_bootstrap_intervals_contain_the_estimates_and_narrow_with_more_models():
    widths = []
    for n in (8, 80):
        rng = np.random.default_rng(n)
        x = rng.uniform(0, 1, n)
        y = x + rng.normal(0, 0.3, n)
        row = regress_one(x, y)
        assert row["r2_lo"] <= row["r2"] <= row["r2_hi"]
        assert row["kendall_tau_lo"] <= row["kendall_tau"] <= row["kendall_tau_hi"]
        widths.append(row["kendall_tau_hi"] - row["kendall_tau_lo"])
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(n): 10x the models, about a third of the width


def test_regress_carries_model_names_and_few_models_give_no_intervals():
    out = regress(random_zoo(), ["alpha"]).set_index("series")
    assert out.loc["VGG", "most_influential"].startswith("vgg")
    small = regress(random_zoo().groupby("series").head(2), ["alpha"])
    assert small["slope_lo"].isna().all() and (small["most_influential"] == "").all()


def test_ols_band_is_statsmodels_confidence_band_of_the_mean():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([1.2, 1.9, 3.2, 3.8, 5.1])
    grid = np.array([0.0, 3.0, 6.0])
    lo, hi = ols_band(x, y, grid, level=0.95)
    slope, intercept = np.polyfit(x, y, 1)
    s = math.sqrt(np.sum((y - intercept - slope * x) ** 2) / 3)
    half = stats.t.ppf(0.975, 3) * s * np.sqrt(1 / 5 + (grid - 3.0) ** 2 / 10.0)  # closed form
    np.testing.assert_allclose(lo, intercept + slope * grid - half, rtol=1e-9)
    np.testing.assert_allclose(hi, intercept + slope * grid + half, rtol=1e-9)
    assert np.isnan(ols_band(x[:2], y[:2], grid)[0]).all()
