import json

import numpy as np
import pytest

from conftest import write_model_dir
from zooscope.config import EsdSettings
from zooscope.spectra import blas, esd
from zooscope.spectra import spectrum


def svd_eigenvalues(matrix):
    return np.sort(np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False) ** 2)


@pytest.fixture
def model_dir(tmp_path, rng):
    return write_model_dir(tmp_path / "model", [
        ("fc1", "Linear", rng.standard_normal((80, 64))),
        ("conv", "Conv2d", rng.standard_normal((16, 8, 3, 3))),
        ("fc2", "Linear", rng.standard_normal((10, 80))),
    ])


def run(model_dir, out_dir, *, device="cpu", shard=None, threads=1, randomize=False, **settings):
    """compute_model_esd with these EsdSettings (without the shuffled ESDs unless asked)."""
    return esd.compute_model_esd(model_dir / "model.safetensors", model_dir / "layers.json", out_dir,
                                 EsdSettings(randomize=randomize, **settings), device=device, shard=shard,
                                 threads=threads)


def test_eigenvalues_per_layer_match_an_svd(model_dir, tmp_path):
    from safetensors.numpy import load_file

    index = run(model_dir, tmp_path / "esd")
    weights = load_file(str(model_dir / "model.safetensors"))
    assert [r["name"] for r in index["layers"]] == ["fc1", "conv", "fc2"]
    fc1 = np.load(tmp_path / "esd" / "fc1.npy")
    assert fc1.shape == (1, 64) and fc1.dtype == np.float64
    # the float32 Gram route (esd.gram's default): every eigenvalue within 1e-6 of lambda_max
    # (tests/test_spectrum.py bounds it), lambda_max itself to 1e-6 relative
    expected = svd_eigenvalues(weights["fc1.weight"])
    np.testing.assert_allclose(fc1[0], expected, rtol=1e-6, atol=1e-6 * expected.max())
    assert fc1[0, -1] == pytest.approx(expected[-1], rel=1e-6)
    conv = np.load(tmp_path / "esd" / "conv.npy")
    assert conv.shape == (9, 8)
    expected = 4.5 * svd_eigenvalues(weights["conv.weight"][:, :, 1, 1])
    np.testing.assert_allclose(conv[4], expected, rtol=1e-6, atol=1e-6 * expected.max())
    assert index["layers"][1]["slices"][4] == "1,1"
    assert (index["layers"][2]["N"], index["layers"][2]["M"]) == (80, 10)


def test_rerun_reuses_unchanged_layers_and_recomputes_changed_ones(model_dir, tmp_path, rng, monkeypatch):
    run(model_dir, tmp_path / "esd")
    calls = []
    original = spectrum.gram_matrix
    monkeypatch.setattr(spectrum, "gram_matrix", lambda m, *a, **kw: calls.append(m.shape) or original(m, *a, **kw))
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


def test_randomize_stores_the_shuffled_spectra_beside_the_originals(model_dir, tmp_path):
    from safetensors.numpy import load_file

    index = run(model_dir, tmp_path / "esd", randomize=True)
    assert index["settings"]["randomize"] is True
    weights = load_file(str(model_dir / "model.safetensors"))
    for record in index["layers"]:
        assert record["rand_file"] == f"{record['name']}.rand.npy"
        values = esd.load_layer_eigenvalues(tmp_path / "esd", record)
        rand = esd.load_layer_eigenvalues(tmp_path / "esd", record, randomized=True)
        assert rand.shape == values.shape
        # shuffling keeps every entry, so each matrix keeps its squared Frobenius norm, not its spectrum
        # (the shuffled spectra are float32 sums: within (N + M) eps32 of it, spectrum.shuffled_eigenvalues)
        rtol = (record["N"] + record["M"]) * np.finfo(np.float32).eps
        np.testing.assert_allclose(rand.sum(axis=1), values.sum(axis=1), rtol=rtol)
        assert not np.allclose(rand, values)
    fc1 = np.load(tmp_path / "esd" / "fc1.npy")[0]
    # the float32 Gram route keeps ||W||_F^2 to 1e-6 relative (docs/speed.md; measured about 1e-8)
    assert fc1.sum() == pytest.approx(np.sum(weights["fc1.weight"].astype(np.float64) ** 2), rel=1e-6)
    # seeded per layer: a fresh run gives the same shuffled spectra
    run(model_dir, tmp_path / "again", randomize=True)
    np.testing.assert_array_equal(np.load(tmp_path / "esd" / "conv.rand.npy"),
                                  np.load(tmp_path / "again" / "conv.rand.npy"))


def test_turning_randomize_off_recomputes_and_removes_the_shuffled_spectra(model_dir, tmp_path):
    run(model_dir, tmp_path / "esd", randomize=True)
    index = run(model_dir, tmp_path / "esd", randomize=False)
    assert all(record["rand_file"] is None for record in index["layers"])
    assert sorted(p.name for p in (tmp_path / "esd").glob("*.npy")) == ["conv.npy", "fc1.npy", "fc2.npy"]


def test_conv2d_fft_is_one_pooled_spectrum_of_the_operator(model_dir, tmp_path):
    from safetensors.numpy import load_file

    index = run(model_dir, tmp_path / "esd", conv2d="fft", conv2d_fft_size=4, randomize=True)
    conv = index["layers"][1]
    assert conv["slices"] == [""] and (conv["N"], conv["M"]) == (16 * 16, 8 * 16)
    values = esd.load_layer_eigenvalues(tmp_path / "esd", conv)
    kernel = load_file(str(model_dir / "model.safetensors"))["conv.weight"].astype(np.float64)
    assert values.shape == (1, 8 * 16)
    # Parseval: the operator on 4 x 4 inputs has 16 times the kernel's squared Frobenius norm
    assert values.sum() == pytest.approx(16 * np.sum(kernel ** 2), rel=1e-9)
    rand = esd.load_layer_eigenvalues(tmp_path / "esd", conv, randomized=True)
    assert rand.sum() == pytest.approx(values.sum(), rel=1e-9)
    # a kernel larger than the input is a failed layer that says how to fix it
    index = run(model_dir, tmp_path / "esd", conv2d="fft", conv2d_fft_size=2)
    assert index["layers"][1]["status"] == "failed" and "conv2d_fft_size" in index["layers"][1]["reason"]


def test_conv2d_stacked_is_one_matrix(model_dir, tmp_path):
    conv = run(model_dir, tmp_path / "esd", conv2d="stacked")["layers"][1]
    assert conv["slices"] == [""] and (conv["N"], conv["M"]) == (9 * 16, 8)


def test_sharded_model_gives_the_unsharded_index_and_entries(tmp_path, rng):
    model = write_model_dir(tmp_path / "model", [
        ("a", "Linear", rng.standard_normal((90, 60))), ("b", "Conv2d", rng.standard_normal((12, 6, 3, 3))),
        ("c", "Linear", rng.standard_normal((70, 70))), ("d", "Embedding", rng.standard_normal((100, 20))),
        ("e", "Linear", rng.standard_normal((30, 80))),
    ])
    whole = run(model, tmp_path / "whole", randomize=True)
    sharded_dir = tmp_path / "sharded"
    shards = [run(model, sharded_dir, randomize=True, shard=(k, 3)) for k in (3, 1, 2)]  # any order
    # each shard computed a disjoint part of the layers, together all of them
    parts = [[r["name"] for r in index["layers"]] for index in shards]
    assert sorted(sum(parts, [])) == ["a", "b", "c", "d", "e"] and all(parts)
    merged = esd.merge_shards(shards, model / "layers.json", sharded_dir)
    assert merged == whole
    files = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert sorted(p.name for p in sharded_dir.iterdir()) == files
    for name in files:
        assert (sharded_dir / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_merge_refuses_incomplete_or_mismatched_shards(model_dir, tmp_path):
    shards = [run(model_dir, tmp_path, shard=(k, 2)) for k in (1, 2)]
    with pytest.raises(ValueError, match=r"shards of model 'm' are \[\(1, 2\)\], not 1..1 of 1"):
        esd.merge_shards(shards[:1], model_dir / "layers.json", tmp_path)
    other = run(model_dir, tmp_path / "other", shard=(2, 2), normalize="N")
    with pytest.raises(ValueError, match="different settings"):
        esd.merge_shards([shards[0], other], model_dir / "layers.json", tmp_path)
    with pytest.raises(ValueError, match="shard 3 of 2 does not exist"):
        run(model_dir, tmp_path, shard=(3, 2))


def test_device_setting_reaches_the_spectrum(model_dir, tmp_path, monkeypatch):
    on_cpu, in_torch = [], []
    for name, seen in (("gram_matrix", on_cpu), ("_torch_eigenvalues", in_torch)):
        monkeypatch.setattr(spectrum, name, lambda *a, _seen=seen, _original=getattr(spectrum, name), **kw:
                            _seen.append(kw.get("device")) or _original(*a, **kw))
    monkeypatch.setattr(spectrum, "GPU_DEVICE_NODES", ("/nonexistent/nvidiactl",))
    run(model_dir, tmp_path / "auto", device="auto")
    assert on_cpu and not in_torch  # auto without a GPU: numpy on the CPU
    with pytest.raises(ValueError, match="device: cuda, but this job sees no CUDA GPU"):
        run(model_dir, tmp_path / "cuda", device="cuda")


def test_layers_computed_in_parallel_or_in_batches_give_the_same_bytes(tmp_path, rng, monkeypatch):
    """Small layers run a layer per thread with one BLAS thread each, large ones in batches (Gram
    matrices with all threads, then the two-stage eigensolves at once): which way a layer goes
    depends on its shape, never on the job's threads."""
    model = write_model_dir(tmp_path / "model", [
        (f"fc{i}", "Linear", rng.standard_normal((40 + 7 * i, 24 + 5 * i))) for i in range(6)
    ] + [("conv", "Conv2d", rng.standard_normal((12, 30, 3, 3)))])
    monkeypatch.setattr(esd, "PARALLEL_LAYERS_BELOW", 40)  # fc4, fc5: in a batch; the rest: in parallel
    monkeypatch.setattr(blas, "two_stage_from", lambda: 44)  # fc4 (M = 44) and fc5: the two-stage solver
    one = run(model, tmp_path / "one", threads=1)
    two = run(model, tmp_path / "two", threads=2)
    assert [r["name"] for r in two["layers"]] == [f"fc{i}" for i in range(6)] + ["conv"]
    assert one["layers"] == two["layers"]
    for record in two["layers"]:
        assert (tmp_path / "one" / record["file"]).read_bytes() == (tmp_path / "two" / record["file"]).read_bytes()
    from safetensors.numpy import load_file

    weights = load_file(str(model / "model.safetensors"))
    for i in range(6):  # the float32 Gram route: to 1e-6 of lambda_max (tests/test_spectrum.py bounds it)
        expected = svd_eigenvalues(weights[f"fc{i}.weight"])
        np.testing.assert_allclose(np.load(tmp_path / "two" / f"fc{i}.npy")[0], expected, rtol=1e-6,
                                   atol=1e-6 * expected.max())


def test_large_layers_gram_matrices_use_all_threads_and_their_eigensolves_one_each(tmp_path, rng, monkeypatch):
    """A batch's eigensolves run at once with one BLAS thread each, beside the small layers; a
    batch alone, with fewer eigensolves than threads, shares the threads out; Gram matrices of
    large layers get all the job's threads."""
    from threadpoolctl import threadpool_info

    def blas_threads():  # BLAS only: an OpenMP library's threads (torch's) are per calling thread
        return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")

    seen = {"gram": [], "solve": []}
    for name, calls in (("gram_matrix", seen["gram"]), ("gram_eigenvalues", seen["solve"])):
        monkeypatch.setattr(spectrum, name, lambda *a, _calls=calls, _original=getattr(spectrum, name), **kw:
                            _calls.append((min(np.shape(a[0])), blas_threads())) or _original(*a, **kw))
    monkeypatch.setattr(esd, "PARALLEL_LAYERS_BELOW", 40)
    layers = [(f"fc{i}", "Linear", rng.standard_normal((60, m))) for i, m in enumerate((50, 45, 41, 30))]
    run(write_model_dir(tmp_path / "mixed", layers), tmp_path / "mixed-esd", threads=2)
    # three large layers in batches of two: the first batch's two solves, then the last's one
    # beside the small layer (M = 30), every solve on one thread
    assert sorted(seen["gram"]) == [(30, 1), (41, 2), (45, 2), (50, 2)]  # (the M x M Gram's side, threads)
    assert sorted(seen["solve"]) == [(30, 1), (41, 1), (45, 1), (50, 1)]
    seen["gram"].clear(), seen["solve"].clear()
    run(write_model_dir(tmp_path / "alone", layers[:1]), tmp_path / "alone-esd", threads=2)
    assert seen == {"gram": [(50, 2)], "solve": [(50, 2)]}


def test_conv2d_pooled_is_every_scaled_slice_in_one_spectrum(model_dir, tmp_path):
    from safetensors.numpy import load_file

    index = run(model_dir, tmp_path / "esd", conv2d="pooled", randomize=True)
    conv = index["layers"][1]
    assert conv["slices"] == [""] and (conv["N"], conv["M"]) == (16, 8)
    kernel = load_file(str(model_dir / "model.safetensors"))["conv.weight"].astype(np.float64)
    # independently: numpy SVD of each (out x in) slice, squared, times kh*kw/2 = 4.5, all together
    expected = np.sort(np.concatenate([4.5 * svd_eigenvalues(kernel[:, :, i, j])
                                       for i in range(3) for j in range(3)]))
    values = esd.load_layer_eigenvalues(tmp_path / "esd", conv)
    assert values.shape == (1, 9 * 8)
    np.testing.assert_allclose(values[0], expected, rtol=1e-9)
    # the shuffled ESD shuffles each slice on its own: each slice keeps its Frobenius norm
    # (float32 sums: within (N + M) eps32 of it, spectrum.shuffled_eigenvalues)
    rand = esd.load_layer_eigenvalues(tmp_path / "esd", conv, randomized=True)
    assert rand.sum() == pytest.approx(4.5 * np.sum(kernel ** 2), rel=(16 + 8) * float(np.finfo(np.float32).eps))
    # dense layers are as with slices; the setting is part of the cache key
    sliced = run(model_dir, tmp_path / "esd", conv2d="slices")["layers"][1]
    assert sliced["key"] != conv["key"] and len(sliced["slices"]) == 9


def test_conv2d_pooled_alphas_are_weightwatchers(tmp_path):
    """The reference package, where it is installed (the bench extra): analyze()'s default view
    of a Conv2D layer pools its slices; its alpha is zooscope's pooled alpha, its lambda_max kh*kw
    times smaller (docs/method.md: WeightWatcher scales each pooled slice by sqrt(1/2))."""
    import contextlib
    import io
    import logging
    import warnings

    import torch
    from zooscope.analysis.metrics import fit_layers

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(48, 64, 3), torch.nn.Conv2d(64, 80, 5))
    layers = [(f"{i}", "Conv2d", conv.weight.detach().numpy()) for i, conv in enumerate(net)]
    model = write_model_dir(tmp_path / "model", layers)
    index = run(model, tmp_path / "esd", conv2d="pooled")
    ours = fit_layers(index, lambda record, **kw: esd.load_layer_eigenvalues(tmp_path / "esd", record, **kw))
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its pandas deprecations
            import weightwatcher

            theirs = weightwatcher.WeightWatcher(model=net).analyze()
    finally:
        logging.disable(logging.NOTSET)
    assert list(theirs["num_evals"]) == [9 * 48, 25 * 64] == list(ours["num_evals"])
    np.testing.assert_allclose(ours["alpha"].to_numpy(float), theirs["alpha"].to_numpy(float), rtol=1e-9)
    np.testing.assert_allclose(ours["lambda_max"].to_numpy(float) / theirs["lambda_max"].to_numpy(float),
                               [9, 25], rtol=1e-9)


@pytest.mark.parametrize("conv2d", ["slices", "stacked", "fft"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_weights_give_the_spectra_of_their_float32_widening(tmp_path, dtype, conv2d):
    """The model cache keeps bf16/fp16 as stored (issue 14, item 3): the eigenvalues are those
    of the same weights widened to float32 first (a second route: torch's own widening), to the
    byte, for every layer kind and conv2d method, with the shuffled spectra too."""
    import json

    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = {"fc.weight": torch.randn(70, 60), "conv.weight": torch.randn(12, 6, 3, 3),
               "conv1d.weight": torch.randn(9, 7, 2), "embed.weight": torch.randn(90, 55)}
    kinds = {"fc": "Linear", "conv": "Conv2d", "conv1d": "Conv1d", "embed": "Embedding"}
    low = {key: value.to(getattr(torch, dtype)) for key, value in weights.items()}
    for name, tensors in (("low", low), ("wide", {key: value.float() for key, value in low.items()})):
        folder = tmp_path / name
        folder.mkdir()
        save_file(tensors, folder / "model.safetensors")
        layers = [{"name": key.removesuffix(".weight"), "tensor": key, "type": kinds[key.removesuffix(".weight")],
                   "shape": list(value.shape), "depth": depth, "sha256": "0" * 64}
                  for depth, (key, value) in enumerate(tensors.items())]
        (folder / "layers.json").write_text(json.dumps({"model": "m", "layers": layers}))
        run(folder, tmp_path / f"esd-{name}", conv2d=conv2d, randomize=True)
    for name in kinds:
        for suffix in (".npy", ".rand.npy"):
            assert (tmp_path / "esd-low" / f"{name}{suffix}").read_bytes() == \
                (tmp_path / "esd-wide" / f"{name}{suffix}").read_bytes(), (name, suffix)


def test_the_shuffled_spectra_run_within_the_job_s_threads(model_dir, tmp_path):
    """scipy's BLAS (the float32 eigensolver's) is loaded inside the job: the thread limits must bind
    it too. In a fresh interpreter, where nothing has loaded scipy yet, as in an esd job."""
    import subprocess
    import sys

    script = f"""
import json
from threadpoolctl import threadpool_info
from zooscope.config import EsdSettings
from zooscope.spectra import esd, spectrum
seen, original = [], spectrum.shuffled_eigenvalues
def recording(*args, **kwargs):
    seen.append(max(info["num_threads"] for info in threadpool_info()))
    return original(*args, **kwargs)
spectrum.shuffled_eigenvalues = recording
for below in (0, 10**9):  # every layer one after another, then every layer in the thread pool
    esd.PARALLEL_LAYERS_BELOW = below
    esd.compute_model_esd({str(model_dir / "model.safetensors")!r}, {str(model_dir / "layers.json")!r},
                          {str(tmp_path)!r} + f"/esd{{below}}", EsdSettings(randomize=True), threads=1)
print(json.dumps(seen))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(seen) == 2 * (1 + 9 + 1) and max(seen) == 1
