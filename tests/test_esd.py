import numpy as np
import pytest

from conftest import write_model_dir
from zooscope import esd, spectrum


def svd_eigenvalues(matrix):
    return np.sort(np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False) ** 2)


@pytest.fixture
def model_dir(tmp_path, rng):
    return write_model_dir(tmp_path / "model", [
        ("fc1", "Linear", rng.standard_normal((80, 64))),
        ("conv", "Conv2d", rng.standard_normal((16, 8, 3, 3))),
        ("fc2", "Linear", rng.standard_normal((10, 80))),
    ])


def run(model_dir, out_dir, **settings):
    return esd.compute_model_esd(model_dir / "model.safetensors", model_dir / "layers.json", out_dir, **settings)


def test_eigenvalues_per_layer_match_an_svd(model_dir, tmp_path):
    from safetensors.numpy import load_file

    index = run(model_dir, tmp_path / "esd")
    weights = load_file(str(model_dir / "model.safetensors"))
    assert [r["name"] for r in index["layers"]] == ["fc1", "conv", "fc2"]
    fc1 = np.load(tmp_path / "esd" / "fc1.npy")
    assert fc1.shape == (1, 64) and fc1.dtype == np.float64
    np.testing.assert_allclose(fc1[0], svd_eigenvalues(weights["fc1.weight"]), rtol=1e-6)
    conv = np.load(tmp_path / "esd" / "conv.npy")
    assert conv.shape == (9, 8)
    np.testing.assert_allclose(conv[4], 4.5 * svd_eigenvalues(weights["conv.weight"][:, :, 1, 1]), rtol=1e-6)
    assert index["layers"][1]["slices"][4] == "1,1"
    assert (index["layers"][2]["N"], index["layers"][2]["M"]) == (80, 10)


def test_rerun_reuses_unchanged_layers_and_recomputes_changed_ones(model_dir, tmp_path, rng, monkeypatch):
    run(model_dir, tmp_path / "esd")
    calls = []
    original = spectrum.eigenvalues
    monkeypatch.setattr(spectrum, "eigenvalues", lambda m, **kw: calls.append(m.shape) or original(m, **kw))
    run(model_dir, tmp_path / "esd")
    assert calls == []
    # change one layer's weights: only that layer is recomputed
    from safetensors.numpy import load_file

    weights = load_file(str(model_dir / "model.safetensors"))
    write_model_dir(model_dir, [
        ("fc1", "Linear", rng.standard_normal((80, 64))),
        ("conv", "Conv2d", weights["conv.weight"]),
        ("fc2", "Linear", weights["fc2.weight"]),
    ])
    run(model_dir, tmp_path / "esd")
    assert calls == [(80, 64)]
    # a spectrum setting is part of the cache key
    calls.clear()
    run(model_dir, tmp_path / "esd", normalize="N")
    assert len(calls) == 1 + 9 + 1


def test_nan_layer_becomes_a_failed_record_and_others_are_computed(tmp_path, rng):
    bad = rng.standard_normal((70, 60))
    bad[0, 0] = np.inf
    model_dir = write_model_dir(tmp_path / "model", [("good", "Linear", rng.standard_normal((70, 60))),
                                                     ("bad", "Linear", bad)])
    index = run(model_dir, tmp_path / "esd")
    good, failed = index["layers"]
    assert good["status"] == "ok" and (tmp_path / "esd" / "good.npy").is_file()
    assert failed["status"] == "failed" and "NaN or Inf" in failed["reason"] and failed["file"] is None
    assert not (tmp_path / "esd" / "bad.npy").exists()


def test_entries_of_removed_layers_are_deleted(model_dir, tmp_path, rng):
    run(model_dir, tmp_path / "esd")
    write_model_dir(model_dir, [("fc1", "Linear", rng.standard_normal((80, 64)))])
    run(model_dir, tmp_path / "esd")
    assert sorted(p.name for p in (tmp_path / "esd").iterdir()) == ["fc1.entry.json", "fc1.npy"]
