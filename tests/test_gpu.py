"""The CUDA route of the esd stage (config ``device: cuda``), against float64 SVDs on the CPU.

Skipped where torch sees no CUDA GPU (CI has none); run on a GPU machine with
``python3 -m pytest tests/test_gpu.py``.
"""
import numpy as np
import pytest
import torch

from conftest import write_model_dir
from zooscope.config import EsdSettings, FitSettings
from zooscope.spectra.esd import compute_model_esd, load_layer_eigenvalues
from zooscope.analysis.metrics import fit_layers
from zooscope.spectra.spectrum import eigenvalues, resolve_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def svd_eigenvalues(matrix):
    """The reference: squared singular values from LAPACK's float64 SVD, ascending."""
    return np.sort(np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False) ** 2)


@pytest.mark.parametrize("shape", [(300, 120), (120, 300), (2048, 768), (512, 512)])
def test_cuda_eigenvalues_agree_with_a_float64_svd(shape):
    rng = np.random.default_rng(sum(shape))
    w = (rng.standard_t(3, size=shape) * 0.05).astype(np.float32)
    reference = svd_eigenvalues(w)
    ours = eigenvalues(w, device="cuda")
    assert ours.dtype == np.float64 and ours.shape == (min(shape),)
    assert np.all(np.diff(ours) >= 0)
    # lambda_max and the Frobenius norm to 1e-6 relative (issue 5), every eigenvalue to 1e-9 of lambda_max
    assert abs(ours[-1] - reference[-1]) <= 1e-6 * reference[-1]
    assert abs(ours.sum() - reference.sum()) <= 1e-6 * reference.sum()
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-9 * reference[-1])
    np.testing.assert_allclose(eigenvalues(w, device="cuda", normalize="N"), reference / max(shape),
                               rtol=0, atol=1e-9 * reference[-1] / max(shape))


def test_auto_picks_the_gpu_and_bad_entries_are_refused_there():
    assert resolve_device("auto") == "cuda"
    w = np.ones((40, 30), np.float32)
    w[3, 4] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        eigenvalues(w, device="cuda")


def test_cuda_esd_stage_matches_the_cpu_and_is_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    model_dir = write_model_dir(tmp_path / "model", [
        ("fc1", "Linear", rng.standard_t(3, size=(400, 200)) * 0.1),
        ("conv", "Conv2d", rng.standard_normal((96, 64, 3, 3)) * 0.1),
        ("emb", "Embedding", rng.standard_normal((1000, 64))),
    ])
    runs = {}
    # the GPU route is float64 throughout, so the CPU's float64 products (esd.gram: float64) are its
    # second method; esd.gram's default float32 products are bounded in tests/test_spectrum.py
    for name, device in (("cpu", "cpu"), ("cuda", "cuda"), ("cuda-again", "cuda")):
        out = tmp_path / name
        index = compute_model_esd(model_dir / "model.safetensors", model_dir / "layers.json", out,
                                  EsdSettings(randomize=True, gram="float64"), device=device)
        runs[name] = (index, out)
    cpu_index, cpu_dir = runs["cpu"]
    cuda_index, cuda_dir = runs["cuda"]
    for cpu_record, cuda_record in zip(cpu_index["layers"], cuda_index["layers"]):
        for randomized in (False, True):
            cpu_values = load_layer_eigenvalues(cpu_dir, cpu_record, randomized=randomized)
            cuda_values = load_layer_eigenvalues(cuda_dir, cuda_record, randomized=randomized)
            # the CPU computes the shuffled spectra in float32 (the GPU in float64): within the bound
            # (N + M) eps32 ||W||_F^2 of spectrum.shuffled_eigenvalues; the ESDs to rounding
            tolerance = ((cpu_record["N"] + cpu_record["M"]) * np.finfo(np.float32).eps * cpu_values.sum(axis=1).max()
                         if randomized else 1e-9 * cpu_values.max())
            np.testing.assert_allclose(cuda_values, cpu_values, rtol=0, atol=tolerance)
            again = load_layer_eigenvalues(runs["cuda-again"][1], cuda_record, randomized=randomized)
            assert again.tobytes() == cuda_values.tobytes()  # the same device gives the same bytes
    # and the fits on top agree: the same tails, alphas to rounding
    point = FitSettings().without_uncertainty()
    cpu_layers = fit_layers(cpu_index, lambda r, randomized=False: load_layer_eigenvalues(cpu_dir, r, randomized=randomized),
                            point)
    cuda_layers = fit_layers(cuda_index, lambda r, randomized=False: load_layer_eigenvalues(cuda_dir, r, randomized=randomized),
                             point)
    assert list(cpu_layers["num_pl_spikes"]) == list(cuda_layers["num_pl_spikes"])
    np.testing.assert_allclose(cuda_layers["alpha"].to_numpy(float), cpu_layers["alpha"].to_numpy(float), rtol=1e-8)
