"""The zoo's shared ESD store: one computation per distinct layer, safe under parallel jobs."""
import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from conftest import write_model_dir
from zooscope.spectra import spectrum
from zooscope.config import EsdSettings
from zooscope.spectra.esd import compute_model_esd


def svd_eigenvalues(matrix):
    return np.sort(np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False) ** 2)


def zoo(tmp_path, rng, fine_tunes=3):
    """A base and fine-tunes that share its first two layers and each have their own head."""
    shared = [("fc1", "Linear", rng.standard_normal((70, 60))), ("conv", "Conv2d", rng.standard_normal((12, 6, 3, 3)))]
    dirs = [write_model_dir(tmp_path / "base", [*shared, ("head", "Linear", rng.standard_normal((10, 70)))], "base")]
    heads = []
    for i in range(fine_tunes):
        heads.append(rng.standard_normal((10, 70)))
        dirs.append(write_model_dir(tmp_path / f"ft{i}", [*shared, ("head", "Linear", heads[-1])], f"ft{i}"))
    return dirs, shared, heads


def eigen_calls(monkeypatch) -> list:
    """The shape of every matrix decomposed from now on: ESDs and the randomization check's
    shuffled spectra (its own float32 route)."""
    calls = []
    for name in ("gram_matrix", "shuffled_eigenvalues"):  # gram_matrix: every ESD on the CPU
        original = getattr(spectrum, name)
        monkeypatch.setattr(spectrum, name, lambda m, *args, original=original, **kw:
                            calls.append(m.shape) or original(m, *args, **kw))
    return calls


def run(model_dir, out_dir, store, **settings):
    return compute_model_esd(model_dir / "model.safetensors", model_dir / "layers.json", out_dir,
                             EsdSettings(randomize=True, **settings), shared_cache=store)


def test_layers_shared_across_models_are_computed_once(tmp_path, rng, monkeypatch):
    dirs, shared, heads = zoo(tmp_path, rng)
    calls = eigen_calls(monkeypatch)
    store = tmp_path / "store"
    indexes = [run(d, tmp_path / "esd" / d.name, store) for d in dirs]
    # fc1 (1 matrix) and conv (9 slices) once, each with its shuffled copy; a head per model
    assert len(calls) == 2 * (1 + 9) + 2 * len(dirs)
    # the reused entries are the computed ones: same index records, same eigenvalues
    base_fc1 = next(r for r in indexes[0]["layers"] if r["name"] == "fc1")
    for index, d in zip(indexes[1:], dirs[1:]):
        assert next(r for r in index["layers"] if r["name"] == "fc1") == base_fc1
        fc1 = np.load(tmp_path / "esd" / d.name / "fc1.npy")
        expected = svd_eigenvalues(shared[0][2].astype(np.float32))  # to the float32 Gram route's 1e-6 of lambda_max
        np.testing.assert_allclose(fc1[0], expected, rtol=1e-6, atol=1e-6 * expected.max())
        assert (tmp_path / "esd" / d.name / "fc1.rand.npy").is_file()
    head = np.load(tmp_path / "esd" / "ft2" / "head.npy")
    expected = svd_eigenvalues(heads[2].astype(np.float32))
    np.testing.assert_allclose(head[0], expected, rtol=1e-6, atol=1e-6 * expected.max())
    # without the store the index is the same
    alone = run(dirs[3], tmp_path / "alone", None)
    assert json.dumps(alone, sort_keys=True) == json.dumps(indexes[3], sort_keys=True)


def test_a_setting_is_part_of_the_shared_key(tmp_path, rng, monkeypatch):
    dirs, _, _ = zoo(tmp_path, rng, fine_tunes=1)
    store = tmp_path / "store"
    run(dirs[0], tmp_path / "a", store)
    calls = eigen_calls(monkeypatch)
    index = run(dirs[1], tmp_path / "b", store, normalize="N")
    assert len(calls) == 2 * (1 + 9 + 1)  # nothing reused under another normalisation
    fc1 = np.load(tmp_path / "b" / "fc1.npy")
    np.testing.assert_allclose(fc1, np.load(tmp_path / "a" / "fc1.npy") / 70, rtol=1e-12)
    assert index["settings"]["normalize"] == "N"


def _job(args):
    model_dir, out_dir, store = args
    return json.dumps(run(model_dir, out_dir, store), sort_keys=True)


def test_parallel_jobs_sharing_the_store_agree(tmp_path, rng):
    dirs, _, _ = zoo(tmp_path, rng, fine_tunes=5)
    store = tmp_path / "store"
    with ProcessPoolExecutor(4) as pool:
        parallel = list(pool.map(_job, [(d, tmp_path / "par" / d.name, store) for d in dirs]))
    serial = [_job((d, tmp_path / "ser" / d.name, None)) for d in dirs]
    assert parallel == serial
    for d in dirs:
        for name in ("fc1.npy", "conv.rand.npy", "head.npy"):
            np.testing.assert_array_equal(np.load(tmp_path / "par" / d.name / name),
                                          np.load(tmp_path / "ser" / d.name / name))
    assert not list(store.rglob("*.part"))  # no temporary file left behind


@pytest.mark.parametrize("missing", ["json", "npy"])
def test_an_incomplete_store_entry_is_computed_afresh(tmp_path, rng, missing):
    dirs, _, _ = zoo(tmp_path, rng, fine_tunes=1)
    store = tmp_path / "store"
    run(dirs[0], tmp_path / "a", store)
    for path in store.rglob(f"*.{missing}"):
        path.unlink()
    index = run(dirs[1], tmp_path / "b", store)
    assert all(r["status"] == "ok" for r in index["layers"])
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "fc1.npy"), np.load(tmp_path / "a" / "fc1.npy"))


def test_zoo_sharing_counts_layers_with_the_weights_of_another():
    from zooscope.spectra.shared_cache import zoo_sharing

    def doc(model, *layers):
        return {"model": model, "layers": [{"sha256": sha, "type": "Linear", "shape": [4, 4]} for sha in layers]}

    sharing = zoo_sharing([doc("base", "a", "b", "c"), doc("ft1", "a", "b", "d"), doc("ft2", "a", "b", "e"),
                           doc("solo", "f")])
    assert (sharing.num_layers, sharing.num_distinct, sharing.num_reused, sharing.num_models_sharing) == (10, 6, 4, 3)
    assert sharing.sentence().startswith("4 of the zoo's 10 layers (40%) have the weights of another layer")
    assert "needs 6 spectra for 10 layers" in sharing.sentence()
    assert "with config esd.shared_cache set" in sharing.sentence(enabled=False)
    assert zoo_sharing([doc("solo", "f")]).sentence().startswith("Every one of the zoo's 1 layers")
