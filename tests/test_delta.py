"""Updates against a base: delta spectra, low-rank spectra, overlaps, the esd stage's delta entries."""
import math

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from conftest import write_model_dir
from zooscope.analysis.metrics import REPLICATES, layer_columns, layer_rows, spectrum_metrics, summarize
from zooscope.spectra import delta, delta_esd
from zooscope.spectra.esd import compute_model_esd, load_layer_eigenvalues


def svd_eigenvalues(matrix):
    return np.sort(np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False) ** 2)


def reference_overlap(dw, base, k):
    """Mean squared cosine and largest cosine of the principal angles between the top-k right
    singular subspaces (of the matrices oriented N x M), from full SVDs and scipy's angles."""
    dw, base = (m if m.shape[0] >= m.shape[1] else m.T for m in (np.asarray(dw, float), np.asarray(base, float)))
    k_dw = min(k, np.linalg.matrix_rank(dw))
    v_dw = np.linalg.svd(dw)[2][:k_dw].T
    v_base = np.linalg.svd(base)[2][:k].T
    cosines = np.cos(subspace_angles(v_dw, v_base))
    return float(np.mean(cosines ** 2)), float(np.max(cosines))


@pytest.mark.parametrize("shape", [(40, 30), (30, 40)])
def test_lowrank_eigenvalues_match_the_dense_svd_and_the_r_by_r_product(rng, shape):
    rank, scale = 4, 0.75
    b, a = rng.standard_normal((shape[0], rank)), rng.standard_normal((rank, shape[1]))
    values = delta.lowrank_eigenvalues(b, a, scale)
    assert values.shape == (rank,)
    np.testing.assert_allclose(values, svd_eigenvalues(scale * b @ a)[-rank:], rtol=1e-10)
    product = scale ** 2 * (b.T @ b) @ (a @ a.T)  # the design notes' r x r route
    np.testing.assert_allclose(values, np.sort(np.linalg.eigvals(product).real), rtol=1e-9)
    np.testing.assert_allclose(delta.lowrank_eigenvalues(b, a, scale, normalize="N"), values / max(shape))


def test_dense_update_spectrum_norm_and_overlap_against_references(rng):
    base = rng.standard_normal((60, 45))
    tuned = base + 0.1 * rng.standard_normal((60, 45))
    dw = tuned.astype(np.float32).astype(float) - base.astype(np.float32).astype(float)
    np.testing.assert_array_equal(delta.difference(tuned.astype(np.float32), base.astype(np.float32)), dw)
    result = delta.dense_matrix_delta(dw, base.astype(np.float32), top_k=5)
    np.testing.assert_allclose(result.eigenvalues, svd_eigenvalues(dw), rtol=1e-8, atol=1e-12)
    assert result.relative_norm == pytest.approx(np.linalg.norm(dw) / np.linalg.norm(base.astype(np.float32)))
    mean_sq, largest = reference_overlap(dw, base.astype(np.float32), 5)
    assert result.overlap == pytest.approx(mean_sq, abs=1e-9)
    assert result.overlap_max == pytest.approx(largest, abs=1e-9)


def test_an_update_along_the_bases_top_directions_overlaps_fully(rng):
    base = rng.standard_normal((50, 30))
    u, s, vt = np.linalg.svd(base, full_matrices=False)
    update = u[:, :3] @ np.diag([3.0, 2.0, 1.0]) @ vt[:3]  # rank 3, in the base's top-3 directions
    result = delta.dense_matrix_delta(update, base, top_k=3)
    assert result.overlap == pytest.approx(1.0, abs=1e-9) and result.overlap_max == pytest.approx(1.0, abs=1e-9)
    # the same update from its factors: the low-rank route agrees
    low = delta.lowrank_matrix_delta(u[:, :3] * [3.0, 2.0, 1.0], vt[:3], 1.0, base, top_k=3)
    np.testing.assert_allclose(low.eigenvalues, [1.0, 4.0, 9.0], rtol=1e-10)
    assert low.overlap == pytest.approx(1.0, abs=1e-9)
    assert low.relative_norm == pytest.approx(math.sqrt(14.0) / np.linalg.norm(base))


@pytest.mark.parametrize("shape", [(48, 36), (36, 48)])
def test_lowrank_and_dense_routes_agree(rng, shape):
    base = rng.standard_normal(shape)
    b, a = rng.standard_normal((shape[0], 6)), rng.standard_normal((6, shape[1]))
    low = delta.lowrank_matrix_delta(b, a, 0.5, base, top_k=4)
    dense = delta.dense_matrix_delta(0.5 * b @ a, base, top_k=4)
    np.testing.assert_allclose(low.eigenvalues, dense.eigenvalues[-6:], rtol=1e-8)
    assert low.relative_norm == pytest.approx(dense.relative_norm, rel=1e-10)
    assert low.overlap == pytest.approx(reference_overlap(0.5 * b @ a, base, 4)[0], abs=1e-8)
    assert low.overlap == pytest.approx(dense.overlap, abs=1e-6)


def test_conv2d_slices_update_is_per_slice_and_scaled(rng):
    base = rng.standard_normal((16, 8, 3, 3))
    tuned = base + rng.standard_normal((16, 8, 3, 3))
    result = delta.layer_delta(tuned, base, "Conv2d", conv2d="slices", top_k=3)
    assert result.slices[4] == "1,1" and len(result.matrices) == 9 and result.shape == (16, 8)
    np.testing.assert_allclose(result.matrices[4].eigenvalues, 4.5 * svd_eigenvalues((tuned - base)[:, :, 1, 1]),
                               rtol=1e-8)
    assert result.matrices[4].relative_norm == pytest.approx(
        np.linalg.norm((tuned - base)[:, :, 1, 1]) / np.linalg.norm(base[:, :, 1, 1]))
    fft = delta.layer_delta(tuned, base, "Conv2d", conv2d="fft")
    assert fft.matrices[0].relative_norm == pytest.approx(np.linalg.norm(tuned - base) / np.linalg.norm(base))
    assert math.isnan(fft.matrices[0].overlap)
    with pytest.raises(ValueError, match="shapes differ"):
        delta.layer_delta(tuned, base[:8], "Conv2d")
    # a small update of float32 weights survives the slices' scaling
    small = (base + 1e-6 * rng.standard_normal(base.shape)).astype(np.float32)
    exact = small.astype(float) - base.astype(np.float32).astype(float)
    result = delta.layer_delta(small, base.astype(np.float32), "Conv2d", conv2d="slices")
    np.testing.assert_allclose(result.matrices[0].eigenvalues, 4.5 * svd_eigenvalues(exact[:, :, 0, 0]), rtol=1e-9)


# ----------------------------------------------------------------------------- the esd stage


@pytest.fixture
def pair(tmp_path, rng):
    fc1, conv, fc2 = rng.standard_normal((80, 64)), rng.standard_normal((16, 8, 3, 3)), rng.standard_normal((10, 80))
    base = write_model_dir(tmp_path / "base", [("fc1", "Linear", fc1), ("conv", "Conv2d", conv),
                                               ("fc2", "Linear", fc2), ("old", "Linear", fc2)], model="base")
    tuned_fc1 = fc1 + 0.05 * rng.standard_normal((80, 64))
    model = write_model_dir(tmp_path / "tuned", [("fc1", "Linear", tuned_fc1), ("conv", "Conv2d", conv),
                                                 ("fc2", "Linear", rng.standard_normal((12, 80))),
                                                 ("new", "Linear", fc2)], model="tuned")
    return base, model, tuned_fc1, fc1


def run_deltas(base, model, out, **kwargs):
    return delta_esd.compute_model_deltas(model / "model.safetensors", model / "layers.json",
                                          base / "model.safetensors", base / "layers.json", out, **kwargs)


def test_model_deltas_pair_layers_by_name_and_shape(pair, tmp_path):
    base, model, tuned_fc1, fc1 = pair
    section = run_deltas(base, model, tmp_path / "esd", top_k=4)
    records = {r["name"]: r for r in section["layers"]}
    assert section["base"] == "base"
    assert records["fc1"]["status"] == "ok" and records["fc1"]["route"] == "dense"
    assert records["conv"]["status"] == "unchanged"
    assert records["fc2"]["status"] == "unmatched" and "shape (12, 80) differs" in records["fc2"]["reason"]
    assert records["new"]["status"] == "unmatched" and records["new"]["reason"] == "not in the base"
    assert section["base_only"] == [{"name": "old", "reason": "not in the model"}]
    values = np.load(tmp_path / "esd" / records["fc1"]["file"])
    dw = tuned_fc1.astype(np.float32).astype(float) - fc1.astype(np.float32).astype(float)
    np.testing.assert_allclose(values[0], svd_eigenvalues(dw), rtol=1e-8, atol=1e-12)


def test_model_deltas_are_cached_by_both_hashes(pair, tmp_path, rng, monkeypatch):
    base, model, _, _ = pair
    run_deltas(base, model, tmp_path / "esd")
    calls = []
    original = delta.layer_delta
    monkeypatch.setattr(delta, "layer_delta", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    run_deltas(base, model, tmp_path / "esd")
    assert calls == []
    run_deltas(base, model, tmp_path / "esd", top_k=3)  # a setting of the update: recomputed
    assert calls == ["Linear"]
    from safetensors.numpy import load_file

    weights = load_file(str(base / "model.safetensors"))  # a new base fc1: fc1 recomputed
    write_model_dir(base, [("fc1", "Linear", rng.standard_normal((80, 64))), ("conv", "Conv2d", weights["conv.weight"]),
                           ("fc2", "Linear", weights["fc2.weight"])], model="base")
    run_deltas(base, model, tmp_path / "esd", top_k=3)
    assert calls == ["Linear", "Linear"]


def test_model_deltas_do_not_depend_on_the_threads(pair, tmp_path):
    base, model, _, _ = pair
    one = run_deltas(base, model, tmp_path / "one", threads=1)
    two = run_deltas(base, model, tmp_path / "two", threads=2)
    assert one == two
    for record in one["layers"]:
        if record["file"]:
            np.testing.assert_array_equal(np.load(tmp_path / "one" / record["file"]),
                                          np.load(tmp_path / "two" / record["file"]))


def test_a_base_of_another_architecture_is_an_error_naming_both(tmp_path, rng):
    base = write_model_dir(tmp_path / "base", [("a", "Linear", rng.standard_normal((5, 5)))], model="resnet")
    model = write_model_dir(tmp_path / "m", [("b", "Linear", rng.standard_normal((5, 5)))], model="gpt")
    with pytest.raises(delta_esd.BaseMismatchError, match="'gpt' and its base 'resnet' have no layer in common"):
        run_deltas(base, model, tmp_path / "esd")


def test_fit_rows_and_summary_carry_the_delta_columns(pair, tmp_path):
    base, model, tuned_fc1, fc1 = pair
    out = tmp_path / "esd"
    index = compute_model_esd(model / "model.safetensors", model / "layers.json", out)
    index["delta"] = run_deltas(base, model, out)
    load = lambda record, randomized=False: load_layer_eigenvalues(out, record, randomized=randomized)  # noqa: E731
    rows = layer_rows(index, load)
    # every column in order (a row's bootstrap replicates ride along last, for the summary)
    assert tuple(key for key in rows[0] if key != REPLICATES) == layer_columns(index) and "delta_alpha" in rows[0]
    fc1_row = next(row for row in rows if row["layer"] == "fc1")
    dw = tuned_fc1.astype(np.float32).astype(float) - fc1.astype(np.float32).astype(float)
    reference = spectrum_metrics(svd_eigenvalues(dw))
    assert fc1_row["delta_status"] == "ok"
    assert fc1_row["delta_alpha"] == pytest.approx(reference["alpha"], rel=1e-6)
    assert fc1_row["delta_log_norm"] == pytest.approx(math.log10(np.sum(dw ** 2)), rel=1e-9)
    conv_rows = [row for row in rows if row["layer"] == "conv"]
    assert len(conv_rows) == 9 and all(row["delta_status"] == "unchanged" and row["delta_relative_norm"] == 0.0
                                       for row in conv_rows)
    assert next(row for row in rows if row["layer"] == "new")["delta_status"] == "unmatched"
    summary = summarize("tuned", rows, index["delta"])
    assert summary["delta"]["num_delta_unchanged"] == 1 and summary["delta"]["num_delta_unmatched"] == 2
    expected = (fc1_row["delta_relative_norm"] + 0.0 * 9) / 10  # one fc1 row, nine conv slices at 0
    assert summary["metrics"]["delta_relative_norm"] == pytest.approx(expected)
    assert summary["metrics"]["delta_alpha"] == pytest.approx(fc1_row["delta_alpha"])
    # without a base: the tables keep their columns
    del index["delta"]
    assert "delta_alpha" not in layer_rows(index, load)[0]


def test_top_vectors_of_a_large_matrix_by_arpack_span_the_svds_subspace(rng):
    matrix = rng.standard_normal((600, 300)) * np.linspace(0.5, 3.0, 300)  # distinct column scales
    assert matrix.shape[1] > delta.SMALL_SVD
    vectors = delta.top_right_vectors(matrix, 6)
    reference = np.linalg.svd(matrix, full_matrices=False)[2][:6].T
    np.testing.assert_allclose(vectors @ vectors.T, reference @ reference.T, atol=1e-8)  # same subspace
    np.testing.assert_array_equal(vectors, delta.top_right_vectors(matrix, 6))  # deterministic
