import math

import numpy as np
import pandas as pd
import pytest

from zooscope.analysis.metrics import LAYER_COLUMNS, SUMMARY_METRICS, fit_layers, spectrum_metrics, summarize


def pareto_spectrum(rng, n=400, exponent=3.0):
    # inverse-CDF sample of p(x) ~ x^-exponent on x >= 1
    return np.sort(rng.random(n) ** (-1.0 / (exponent - 1.0)))


def test_norm_metrics_follow_their_closed_forms(rng):
    values = pareto_spectrum(rng)
    row = spectrum_metrics(values)
    assert row["status"] == "ok"
    assert row["num_evals"] == values.size
    assert row["lambda_max"] == values.max()
    assert row["log_norm"] == pytest.approx(math.log10(values.sum()))
    assert row["log_spectral_norm"] == pytest.approx(math.log10(values.max()))
    assert row["stable_rank"] == pytest.approx(values.sum() / values.max())


def test_power_law_metrics_are_derived_from_the_fit(rng):
    values = pareto_spectrum(rng)
    row = spectrum_metrics(values)
    alpha = row["alpha"]
    assert row["xmax"] == values.max()
    assert row["alpha_weighted"] == pytest.approx(alpha * math.log10(values.max()))
    assert row["log_alpha_norm"] == pytest.approx(math.log10(np.sum(values ** alpha)), rel=1e-12)
    assert row["num_pl_spikes"] == np.count_nonzero(values >= row["xmin"])
    assert row["sigma"] == pytest.approx((alpha - 1) / math.sqrt(row["num_pl_spikes"]))


@pytest.mark.parametrize("exponent, warning", [(1.6, "over-trained"), (3.5, ""), (8.0, "under-trained")])
def test_warning_follows_alpha(rng, exponent, warning):
    row = spectrum_metrics(pareto_spectrum(rng, n=20000, exponent=exponent))
    assert row["warning"] == warning


def test_too_few_eigenvalues_is_skipped_with_a_reason(rng):
    row = spectrum_metrics(pareto_spectrum(rng, n=10), min_evals=50)
    assert row["status"] == "skipped"
    assert "10 eigenvalues < min_evals=50" in row["reason"]
    assert "alpha" not in row
    assert row["log_norm"] == pytest.approx(math.log10(row["stable_rank"] * row["lambda_max"]))


def test_degenerate_spectra_fail_with_a_reason():
    zero = spectrum_metrics(np.zeros(64))
    assert zero["status"] == "failed" and "all eigenvalues are zero" in zero["reason"]
    rank_one = np.zeros(64)
    rank_one[-1] = 5.0
    row = spectrum_metrics(rank_one)
    assert row["status"] == "failed" and "degenerate" in row["reason"]
    assert row["lambda_max"] == 5.0


def test_fit_layers_rows_per_slice_and_failed_records_pass_through(rng):
    spectra = {"a": np.vstack([pareto_spectrum(rng, 60), pareto_spectrum(rng, 60)])}
    index = {"layers": [
        {"name": "a", "type": "Conv2d", "depth": 0, "N": 90, "M": 60, "status": "ok", "reason": "",
         "slices": ["0,0", "0,1"], "file": "a.npy"},
        {"name": "b", "type": "Linear", "depth": 1, "N": 10, "M": 5, "status": "failed",
         "reason": "ValueError: weights contain NaN or Inf (1 of 50 entries)", "slices": [], "file": None},
    ]}
    frame = fit_layers(index, lambda record: spectra[record["name"]])
    assert list(frame.columns) == list(LAYER_COLUMNS)
    assert list(frame["slice"]) == ["0,0", "0,1", ""]
    assert list(frame["status"]) == ["ok", "ok", "failed"]
    assert "NaN" in frame.loc[2, "reason"] and pd.isna(frame.loc[2, "alpha"])


def test_summary_is_the_mean_over_fitted_rows_only():
    layers = [{"layer": layer, "status": status, **{m: value for m in SUMMARY_METRICS}}
              for layer, status, value in [("a", "ok", 1.0), ("a", "ok", 3.0), ("b", "skipped", 100.0),
                                           ("c", "failed", np.nan)]]
    layers[1]["rand_distance"] = None  # a metric missing from a fitted row is averaged over the others
    summary = summarize("m", layers)
    assert summary["metrics"]["alpha"] == 2.0 and summary["metrics"]["rand_distance"] == 1.0
    assert (summary["num_layers"], summary["num_rows"], summary["num_fitted"]) == (3, 4, 2)
    assert (summary["num_skipped"], summary["num_failed"]) == (1, 1)
    for row in layers:
        row["num_traps"] = None
    assert math.isnan(summarize("m", layers)["metrics"]["num_traps"])  # missing from every fitted row
    assert all(value is None for value in summarize("m", layers[2:])["metrics"].values())  # nothing fitted


@pytest.mark.parametrize("kind", ["pl", "tpl", "etpl"])
def test_fit_kind_sets_the_tail_columns(rng, kind):
    values = pareto_spectrum(rng, n=2000, exponent=3.0)
    row = spectrum_metrics(values, kind=kind)
    assert row["status"] == "ok" and row["fit_kind"] == kind
    assert abs(row["alpha"] - 3.0) < 4 * row["sigma"]
    assert row["alpha_weighted"] == pytest.approx(row["alpha"] * math.log10(values.max()))
    assert np.isnan(row["truncation"]) == (kind != "etpl")
    if kind == "pl":  # log-likelihood of the Pareto density on the tail
        tail = values[values >= row["xmin"]]
        expected = np.sum(np.log((row["alpha"] - 1) / row["xmin"] * (tail / row["xmin"]) ** -row["alpha"]))
        assert row["loglik"] == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="unknown fit kind 'xpl'; valid: pl, tpl, etpl"):
        spectrum_metrics(values, kind="xpl")


def test_random_matrix_columns_tell_a_random_matrix_from_a_structured_one(rng):
    n_rows, m_cols = 400, 200
    noise = rng.standard_normal((n_rows, m_cols))
    # correlated: columns share a few strong directions (a low-rank part), shuffling destroys them
    structured = noise + 3.0 * rng.standard_normal((n_rows, 3)) @ rng.standard_normal((3, m_cols))
    rows = {}
    for name, w in (("noise", noise), ("structured", structured)):
        values = np.linalg.eigvalsh(w.T @ w)
        shuffled = rng.permutation(w.ravel()).reshape(w.shape)
        randomized = np.linalg.eigvalsh(shuffled.T @ shuffled)
        rows[name] = spectrum_metrics(values, shape=(n_rows, m_cols), randomized=randomized)
    assert rows["noise"]["num_spikes"] <= 2 and rows["structured"]["num_spikes"] >= 3
    assert rows["noise"]["rand_distance"] < 0.15 < rows["structured"]["rand_distance"]
    assert rows["structured"]["num_traps"] <= 2  # shuffled, the low-rank part is gone
    edge = rows["noise"]["mp_bulk_edge"]
    assert edge == pytest.approx(n_rows * (1 + math.sqrt(m_cols / n_rows)) ** 2, rel=0.03)
    assert rows["noise"]["mp_softrank"] == pytest.approx(edge / rows["noise"]["lambda_max"])


def test_fit_layers_reads_the_randomized_spectra_when_the_record_has_them(rng):
    w = rng.standard_normal((120, 60))
    values = np.linalg.eigvalsh(w.T @ w)[None, :]
    index = {"layers": [{"name": "a", "type": "Linear", "depth": 0, "N": 120, "M": 60, "status": "ok",
                         "reason": "", "slices": [""], "file": "a.npy", "rand_file": "a.rand.npy"}]}
    loads = []
    frame = fit_layers(index, lambda record, randomized=False: loads.append(randomized) or values)
    assert loads == [False, True]
    assert frame.loc[0, "rand_distance"] == 0.0 and frame.loc[0, "fit_kind"] == "pl"
    assert frame.loc[0, "num_spikes"] == frame.loc[0, "num_traps"]
