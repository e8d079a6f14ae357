import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from zooscope.analysis.metrics import LAYER_COLUMNS, SUMMARY_METRICS, fit_layers, spectrum_metrics, summarize
from zooscope.config import FitSettings

# Point estimates only (the uncertainty tests below ask for theirs): the config's defaults otherwise.
POINT = FitSettings().without_uncertainty()


def point(**changes) -> FitSettings:
    return dataclasses.replace(POINT, **changes)


def pareto_spectrum(rng, n=400, exponent=3.0):
    # inverse-CDF sample of p(x) ~ x^-exponent on x >= 1
    return np.sort(rng.random(n) ** (-1.0 / (exponent - 1.0)))


def test_norm_metrics_follow_their_closed_forms(rng):
    values = pareto_spectrum(rng)
    row = spectrum_metrics(values, POINT)
    assert row["status"] == "ok"
    assert row["num_evals"] == values.size
    assert row["lambda_max"] == values.max()
    assert row["log_norm"] == pytest.approx(math.log10(values.sum()))
    assert row["log_spectral_norm"] == pytest.approx(math.log10(values.max()))
    assert row["stable_rank"] == pytest.approx(values.sum() / values.max())


def test_power_law_metrics_are_derived_from_the_fit(rng):
    values = pareto_spectrum(rng)
    row = spectrum_metrics(values, POINT)
    alpha = row["alpha"]
    assert row["xmax"] == values.max()
    assert row["alpha_weighted"] == pytest.approx(alpha * math.log10(values.max()))
    assert row["log_alpha_norm"] == pytest.approx(math.log10(np.sum(values ** alpha)), rel=1e-12)
    assert row["num_pl_spikes"] == np.count_nonzero(values >= row["xmin"])
    assert row["sigma"] == pytest.approx((alpha - 1) / math.sqrt(row["num_pl_spikes"]))


@pytest.mark.parametrize("exponent, warning", [(1.6, "over-trained"), (3.5, ""), (8.0, "under-trained")])
def test_warning_follows_alpha(rng, exponent, warning):
    row = spectrum_metrics(pareto_spectrum(rng, n=20000, exponent=exponent), POINT)
    assert row["warning"] == warning


def test_too_few_eigenvalues_is_skipped_with_a_reason(rng):
    row = spectrum_metrics(pareto_spectrum(rng, n=10), point(min_evals=50))
    assert row["status"] == "skipped"
    assert "10 eigenvalues < min_evals=50" in row["reason"]
    assert "alpha" not in row
    assert row["log_norm"] == pytest.approx(math.log10(row["stable_rank"] * row["lambda_max"]))


def test_degenerate_spectra_fail_with_a_reason():
    zero = spectrum_metrics(np.zeros(64), POINT)
    assert zero["status"] == "failed" and "all eigenvalues are zero" in zero["reason"]
    rank_one = np.zeros(64)
    rank_one[-1] = 5.0
    row = spectrum_metrics(rank_one, POINT)
    assert row["status"] == "failed" and "degenerate" in row["reason"]
    assert row["lambda_max"] == 5.0
    identity = spectrum_metrics(np.full(64, 2.0) + 1e-9 * np.arange(64), POINT)  # (a multiple of) an orthogonal matrix
    assert identity["status"] == "failed" and identity["reason"].startswith("flat spectrum: all 64 eigenvalues")
    assert identity["lambda_max"] == pytest.approx(2.0)


def test_fit_layers_rows_per_slice_and_failed_records_pass_through(rng):
    spectra = {"a": np.vstack([pareto_spectrum(rng, 60), pareto_spectrum(rng, 60)])}
    index = {"layers": [
        {"name": "a", "type": "Conv2d", "depth": 0, "N": 90, "M": 60, "status": "ok", "reason": "",
         "slices": ["0,0", "0,1"], "file": "a.npy"},
        {"name": "b", "type": "Linear", "depth": 1, "N": 10, "M": 5, "status": "failed",
         "reason": "ValueError: weights contain NaN or Inf (1 of 50 entries)", "slices": [], "file": None},
    ]}
    frame = fit_layers(index, lambda record: spectra[record["name"]], POINT)
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
    row = spectrum_metrics(values, point(kind=kind))
    assert row["status"] == "ok" and row["fit_kind"] == kind
    assert abs(row["alpha"] - 3.0) < 4 * row["sigma"]
    assert row["alpha_weighted"] == pytest.approx(row["alpha"] * math.log10(values.max()))
    assert np.isnan(row["truncation"]) == (kind != "etpl")
    if kind == "pl":  # log-likelihood of the Pareto density on the tail
        tail = values[values >= row["xmin"]]
        expected = np.sum(np.log((row["alpha"] - 1) / row["xmin"] * (tail / row["xmin"]) ** -row["alpha"]))
        assert row["loglik"] == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="unknown fit kind 'xpl'; valid: pl, tpl, etpl"):
        spectrum_metrics(values, point(kind="xpl"))


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
        rows[name] = spectrum_metrics(values, POINT, shape=(n_rows, m_cols), randomized=randomized)
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
    frame = fit_layers(index, lambda record, randomized=False: loads.append(randomized) or values, POINT)
    assert loads == [False, True]
    assert frame.loc[0, "rand_distance"] == 0.0 and frame.loc[0, "fit_kind"] == "pl"
    assert frame.loc[0, "num_spikes"] == frame.loc[0, "num_traps"]


# -- uncertainty, verdicts and reliable means (docs/statistics.md) ------------------------------

from zooscope.analysis.metrics import REPLICATES, layer_rows, verdict_for  # noqa: E402

FULL = FitSettings(bootstrap=100, level=0.95, gof=50, alternatives=True)


@pytest.mark.parametrize("alpha, lo, hi, p, kind, verdict", [
    (1.5, 1.2, 1.9, 0.5, "pl", "over-trained"),      # the whole interval below 2
    (1.9, 1.6, 2.1, 0.5, "pl", "uncertain"),         # straddles 2
    (3.0, 2.0, 6.0, 0.5, "pl", "well-trained"),      # within [2, 6], bounds included
    (6.5, 5.5, 7.0, 0.5, "pl", "uncertain"),         # straddles 6
    (7.0, 6.1, 9.0, 0.5, "pl", "under-trained"),     # the whole interval above 6
    (3.0, 2.5, 3.5, 0.05, "pl", "no power law"),     # the goodness of fit rejects it
    (3.0, 2.5, 3.5, 0.05, "tpl", "well-trained"),    # ... but tpl is not the pure power law
    (1.9, math.nan, math.nan, math.nan, "pl", "over-trained"),  # no bootstrap: the point alpha
])
def test_verdict_rules(alpha, lo, hi, p, kind, verdict):
    assert verdict_for(alpha, lo, hi, p, kind=kind) == verdict


def test_a_small_esd_is_uncertain_where_its_point_estimate_says_over_trained():
    warned = uncertain = 0
    for seed in range(12):
        row = spectrum_metrics(pareto_spectrum(np.random.default_rng(seed), n=64, exponent=1.9),
                               point(bootstrap=100))
        assert row["alpha_lo"] <= row["alpha_hi"] and row["xmin_lo"] <= row["xmin_hi"]
        if row["warning"] == "over-trained":
            warned += 1
            uncertain += row["verdict"] == "uncertain"
            assert row["verdict"] == ("over-trained" if row["alpha_hi"] < 2 else "uncertain")
    assert warned >= 4 and uncertain >= warned - 1  # 64 eigenvalues rarely decide it
    large = spectrum_metrics(pareto_spectrum(np.random.default_rng(0), n=20000, exponent=1.6),
                             point(bootstrap=50))
    assert large["alpha_hi"] < 2 and large["verdict"] == "over-trained"


def test_every_uncertainty_column_is_filled_and_the_verdict_follows_the_p_value(rng):
    rows = [spectrum_metrics(np.sort(np.random.default_rng(seed).exponential(1.0, 3000)), FULL)
            for seed in range(4)]
    for row in rows:
        for column in LAYER_COLUMNS:
            if column.startswith(("lr_", "pl_p", "alpha_", "xmin_")) and column not in ("alpha_weighted",):
                assert math.isfinite(row[column]), column
        assert row["lr_etpl"] <= 0  # the power law is nested in etpl
        assert (row["verdict"] == "no power law") == (row["pl_p_value"] < 0.1)
        assert row[REPLICATES]["alpha"].shape == (100,)
        np.testing.assert_allclose(row[REPLICATES]["alpha_weighted"],
                                   row[REPLICATES]["alpha"] * math.log10(row["lambda_max"]))


def test_without_uncertainty_the_columns_are_absent_and_the_verdict_is_the_warning(rng):
    row = spectrum_metrics(pareto_spectrum(rng, n=2000, exponent=3.0), POINT)
    assert not any(key in row for key in ("alpha_lo", "pl_p_value", "lr_exp", REPLICATES))
    assert row["verdict"] == "well-trained" and row["warning"] == ""


def test_clip_xmax_reports_the_fingers_and_keeps_lambda_max(rng):
    values = pareto_spectrum(rng, n=2000, exponent=3.0)
    values = np.sort(np.concatenate([values, values[-1] * np.array([30.0, 60.0])]))
    row = spectrum_metrics(values, point(fingers="clip_xmax", bootstrap=50))
    assert row["num_fingers_clipped"] == 2
    assert row["xmax"] == values[-3] and row["lambda_max"] == values[-1]
    assert row["alpha_weighted"] == pytest.approx(row["alpha"] * math.log10(values[-1]))
    assert row["alpha_lo"] <= 3.0 <= row["alpha_hi"]
    assert spectrum_metrics(values, POINT)["num_fingers_clipped"] == 0
    with pytest.raises(ValueError, match="unknown fit.fingers 'thumbs'"):
        spectrum_metrics(values, point(fingers="thumbs"))


def test_layer_rows_are_seeded_by_the_record_key_so_reruns_are_identical(rng):
    spectra = np.vstack([pareto_spectrum(rng, 300), pareto_spectrum(rng, 300)])

    def index(key):
        return {"layers": [{"name": "a", "type": "Conv2d", "depth": 0, "N": 400, "M": 300, "status": "ok",
                            "reason": "", "slices": ["0,0", "0,1"], "file": "a.npy", "key": key}]}

    def run(key):
        return layer_rows(index(key), lambda record: spectra, FULL)

    first, again, other = run("ab" * 32), run("ab" * 32), run("cd" * 32)
    for a, b in zip(first, again):
        assert {k: v for k, v in a.items() if k != REPLICATES} == {k: v for k, v in b.items() if k != REPLICATES}
    assert first[0]["alpha_lo"] != other[0]["alpha_lo"]
    # the two slices of one record draw different resamples
    assert not np.array_equal(first[0][REPLICATES]["alpha"] - first[0]["alpha"],
                              first[1][REPLICATES]["alpha"] - first[1]["alpha"])


def test_layer_rows_fitted_in_forked_processes_are_the_rows_fitted_in_turn(rng):
    """config threads.fit: the layers in two processes give the same rows, in the same order, as one
    process (each matrix's draws are seeded by its record, not by who fits it); a failed record's row
    stays in its place."""
    spectra = {name: np.vstack([pareto_spectrum(rng, 200 + 40 * i) for _ in range(2)])
               for i, name in enumerate("abcd")}
    records = [{"name": name, "type": "Linear", "depth": depth, "N": 500, "M": spectra[name].shape[1],
                "status": "ok", "reason": "", "slices": ["0", "1"], "file": f"{name}.npy", "key": f"{depth:02d}" * 32}
               for depth, name in enumerate("abcd")]
    records.insert(2, {"name": "bad", "type": "Linear", "depth": 9, "N": 5, "M": 4, "status": "failed",
                       "reason": "ValueError: weights contain NaN or Inf (1 of 20 entries)"})
    index = {"layers": records}

    def load(record):  # a closure: the forked workers inherit it, nothing is pickled
        return spectra[record["name"]]

    in_turn, forked = layer_rows(index, load, FULL), layer_rows(index, load, FULL, workers=2)
    assert [(row["layer"], row["slice"]) for row in forked] == [(row["layer"], row["slice"]) for row in in_turn]
    assert [row["layer"] for row in forked][4] == "bad"
    for a, b in zip(in_turn, forked):
        # repr: the same floats to the last bit, NaN (a pickled copy is another object) included
        assert repr({k: v for k, v in a.items() if k != REPLICATES}) == repr({k: v for k, v in b.items() if k != REPLICATES})
        if REPLICATES in a:
            for metric, values in a[REPLICATES].items():
                np.testing.assert_array_equal(values, b[REPLICATES][metric])


def test_summary_intervals_and_reliable_means():
    replicates = [np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([3.0, 3.0, 5.0, 1.0, np.nan])]
    rows = []
    for alpha, verdict, boot in [(2.5, "well-trained", replicates[0]), (3.5, "uncertain", replicates[1])]:
        row = {"layer": f"l{alpha}", "status": "ok", "verdict": verdict, **{m: alpha for m in SUMMARY_METRICS}}
        row[REPLICATES] = {"alpha": boot, "alpha_weighted": 2 * boot, "log_alpha_norm": boot + 1}
        rows.append(row)
    summary = summarize("m", rows, level=0.5)
    # the model mean's replicates: (2, 2.5, 4, 2.5) and a NaN one left out; quartiles 2.375, 2.875
    assert (summary["metrics"]["alpha_lo"], summary["metrics"]["alpha_hi"]) == pytest.approx((2.375, 2.875))
    assert summary["metrics"]["alpha_weighted_hi"] == pytest.approx(2 * 2.875)
    assert summary["metrics"]["alpha_reliable"] == 2.5 and summary["num_reliable"] == 1
    assert summary["metrics"]["alpha"] == 3.0
    del rows[1][REPLICATES]  # a fitted row without replicates: no interval of the mean
    assert math.isnan(summarize("m", rows)["metrics"]["alpha_lo"])


def test_tpl_refits_the_whole_procedure_and_etpl_gets_no_interval(rng):
    values = pareto_spectrum(rng, n=2000, exponent=3.0)
    tpl = spectrum_metrics(values, point(kind="tpl", bootstrap=50, gof=20))
    assert tpl["alpha_lo"] < tpl["alpha"] < tpl["alpha_hi"] and tpl["alpha_lo"] <= 3.0 <= tpl["alpha_hi"]
    assert math.isfinite(tpl["pl_p_value"])  # the pure power law's test, reported for every kind
    etpl = spectrum_metrics(values, point(kind="etpl", bootstrap=50))
    assert "alpha_lo" not in etpl and REPLICATES not in etpl
    assert etpl["verdict"] == verdict_for(etpl["alpha"], kind="etpl")
