import numpy as np
import pytest

from zooscope.spectra import spectrum
from zooscope.spectra.spectrum import (
    conv2d_fft_eigenvalues, conv2d_fft_shape, conv2d_fft_size, eigenvalues, layer_matrices, oriented_shape,
    resolve_device, shuffled, shuffled_eigenvalues,
)
from zooscope.spectra.random_matrix import esd_distance, fit_marchenko_pastur

EPS32 = float(np.finfo(np.float32).eps)


def svd_eigenvalues(matrix):
    return np.sort(np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False) ** 2)


def float32_gram_bound(w) -> float:
    """The worst-case error of every eigenvalue of the float32 Gram route (esd.gram: float32):
    each entry of a block's float32 product is within gamma_L sum_k |w_ki| |w_kj| of the exact one
    (L lines, the standard bound of a float32 dot product), so the perturbation's 2-norm, which
    bounds every eigenvalue's move (Weyl), is at most gamma_L || |W|^T |W| ||_F <= gamma_L ||W||_F^2;
    the float64 sum of the blocks and the float64 eigensolver add rounding of eps64 size."""
    lines = min(max(w.shape), spectrum.GRAM_FLOAT32_LINES)
    gamma = lines * EPS32 / (1 - lines * EPS32)
    frobenius = float(np.sum(np.asarray(w, dtype=np.float64) ** 2))
    # an eigenvalue below the route's resolution is reported as 0: it moves by at most that
    return max((gamma + 1e-12) * frobenius, spectrum.GRAM_FLOAT32_RESOLUTION * svd_eigenvalues(w)[-1])


@pytest.mark.parametrize("shape", [(200, 80), (80, 200), (64, 64)])
def test_eigenvalues_equal_squared_singular_values(rng, shape):
    w = rng.standard_normal(shape).astype(np.float32)
    expected = svd_eigenvalues(w)
    exact = eigenvalues(w, gram="float64")
    assert exact.shape == (min(shape),) and np.all(np.diff(exact) >= 0)
    np.testing.assert_allclose(exact, expected, rtol=1e-9, atol=1e-9 * expected.max())
    values = eigenvalues(w)  # the default, esd.gram: float32
    assert values.shape == (min(shape),) and np.all(np.diff(values) >= 0)
    assert np.abs(values - expected).max() <= float32_gram_bound(w)
    # lambda_max and the Frobenius norm to 1e-6 relative, as the norm metrics need.
    for got in (exact, values):
        assert got[-1] == pytest.approx(expected[-1], rel=1e-6)
        assert got.sum() == pytest.approx(np.sum(np.asarray(w, dtype=np.float64) ** 2), rel=1e-6)


@pytest.mark.parametrize("kind", ["gaussian", "student-t", "spiked", "tiny", "huge"])
@pytest.mark.parametrize("shape", [(9000, 300), (300, 9000)])
def test_the_float32_gram_route_is_within_its_bound_of_a_float64_svd(rng, kind, shape):
    """More lines than one float32 block (9000 > 4096: three blocks summed in float64), heavy-tailed
    and low-rank-plus-noise entries, and scales that float32 squares would underflow (1e-20) or
    overflow (1e25), where the route multiplies the matrix in float64."""
    n, m = max(shape), min(shape)
    if kind == "student-t":
        w = rng.standard_t(3, size=(n, m))
    elif kind == "spiked":
        w = rng.standard_normal((n, m)) + 3 * np.outer(rng.standard_normal(n), rng.standard_normal(m)) / np.sqrt(m)
    else:
        w = rng.standard_normal((n, m)) * {"gaussian": 1.0, "tiny": 1e-20, "huge": 1e25}[kind]
    w = (w if shape[0] >= shape[1] else w.T).astype(np.float32)
    expected = svd_eigenvalues(w)
    values = eigenvalues(w)
    assert np.abs(values - expected).max() <= float32_gram_bound(w)
    assert values[-1] == pytest.approx(expected[-1], rel=1e-6)
    assert values.sum() == pytest.approx(float(np.sum(np.asarray(w, dtype=np.float64) ** 2)), rel=1e-6)
    if kind in ("tiny", "huge"):  # the float64 fallback: as exact as the float64 route
        np.testing.assert_allclose(values, expected, rtol=1e-9, atol=1e-9 * expected.max())


def test_a_rank_deficient_matrix_keeps_exact_zeros_in_the_float32_route(rng):
    """The float32 products round the zero eigenvalues of a rank-deficient matrix to about 1e-7 of
    lambda_max; below GRAM_FLOAT32_RESOLUTION they are reported as 0, so the fit's floor leaves
    them out as it does in the float64 route, and the others are the SVD's."""
    rank = 5
    w = (rng.standard_normal((600, rank)) @ rng.standard_normal((rank, 90))).astype(np.float32)
    w[:, :10] = 0.0  # ten dead units too
    expected = svd_eigenvalues(w)
    values = eigenvalues(w)
    assert np.count_nonzero(values) == rank
    assert np.count_nonzero(eigenvalues(w, gram="float64") > 1e-5) == rank
    np.testing.assert_allclose(values[-rank:], expected[-rank:], rtol=1e-6)


def test_the_float32_gram_route_of_half_precision_is_that_of_its_float32_widening(rng):
    """bf16/float16 blocks are widened to float32 (exactly) in a buffer, float32 ones read in place:
    the same products, so the same bytes."""
    import ml_dtypes

    w = rng.standard_normal((5000, 70)).astype(ml_dtypes.bfloat16)
    for stored in (w, w.T):
        wide = np.asarray(stored, dtype=np.float32)
        assert spectrum.gram_matrix(stored, precision="float32")[0].tobytes() == \
            spectrum.gram_matrix(wide, precision="float32")[0].tobytes()
    with pytest.raises(ValueError, match="unknown Gram precision 'float16'; valid: float32, float64"):
        spectrum.gram_matrix(w, precision="float16")


def test_normalize_by_n_divides_by_the_larger_dimension(rng):
    w = rng.standard_normal((30, 120))
    np.testing.assert_allclose(eigenvalues(w, normalize="N"), svd_eigenvalues(w) / 120, rtol=1e-9)


def test_rank_deficient_matrix_has_exact_zeros_not_negatives():
    w = np.outer(np.arange(1.0, 61.0), np.ones(20))
    values = eigenvalues(w)
    assert np.all(values >= 0)
    assert values[-1] == pytest.approx(np.sum(np.arange(1.0, 61.0) ** 2) * 20)
    assert np.all(values[:-1] < 1e-6 * values[-1])


def test_non_finite_weights_are_refused(rng):
    w = rng.standard_normal((10, 5))
    w[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        eigenvalues(w)


def test_conv2d_slices_are_scaled_out_by_in_matrices(rng):
    weight = rng.standard_normal((12, 7, 3, 3))
    matrices = layer_matrices(weight, "Conv2d")
    assert [m.label for m in matrices] == [f"{i},{j}" for i in range(3) for j in range(3)]
    for m in matrices:
        i, j = map(int, m.label.split(","))
        assert oriented_shape(m.matrix) == (12, 7)
        # scaling W by sqrt(k*k/2) multiplies the eigenvalues by k*k/2 = 4.5
        np.testing.assert_allclose(eigenvalues(m.matrix), 4.5 * svd_eigenvalues(weight[:, :, i, j]), rtol=1e-9)


def test_linear_embedding_and_conv1d(rng):
    assert len(layer_matrices(rng.standard_normal((5, 3)), "Linear")) == 1
    assert len(layer_matrices(rng.standard_normal((50, 8)), "Embedding")) == 1
    assert [m.label for m in layer_matrices(rng.standard_normal((6, 4, 1)), "Conv1d")] == [""]
    assert [m.label for m in layer_matrices(rng.standard_normal((6, 4, 3)), "Conv1d")] == ["0", "1", "2"]


def test_bad_layer_type_or_rank_names_the_problem(rng):
    with pytest.raises(ValueError, match="unknown layer type 'LSTM'"):
        layer_matrices(rng.standard_normal((3, 3)), "LSTM")
    with pytest.raises(ValueError, match="rank 4"):
        layer_matrices(rng.standard_normal((3, 3)), "Conv2d")


def circular_conv_operator(weight, n):
    """The explicit (out*n*n) x (in*n*n) matrix of a stride-1 Conv2d with circular padding on n x n
    inputs, built by applying the layer (as PyTorch computes it: a cross-correlation) to every
    basis image with numpy rolls."""
    out_channels, in_channels, kh, kw = weight.shape
    columns = []
    for c in range(in_channels):
        for a in range(n):
            for b in range(n):
                x = np.zeros((in_channels, n, n))
                x[c, a, b] = 1.0
                y = np.zeros((out_channels, n, n))
                for i in range(kh):
                    for j in range(kw):
                        # y[o, p, q] += sum_c w[o, c, i, j] x[c, p + i, q + j] (indices mod n)
                        shifted = np.roll(x, shift=(-i, -j), axis=(1, 2))
                        y += np.einsum("oc,cpq->opq", weight[:, :, i, j], shifted)
                columns.append(y.ravel())
    return np.stack(columns, axis=1)


@pytest.mark.parametrize("shape, n", [((5, 3, 3, 3), 3), ((5, 3, 3, 3), 6), ((3, 4, 2, 3), 4), ((4, 4, 1, 1), 2)])
def test_conv2d_fft_eigenvalues_are_those_of_the_circular_convolution_operator(rng, shape, n):
    weight = rng.standard_normal(shape)
    operator = circular_conv_operator(weight, n)
    expected = np.sort(np.linalg.svd(operator, compute_uv=False) ** 2)
    values = conv2d_fft_eigenvalues(weight, n)
    assert conv2d_fft_shape(shape, n) == oriented_shape(operator)
    assert values.shape == (min(shape[:2]) * n * n,)
    np.testing.assert_allclose(values, expected, rtol=1e-9, atol=1e-12 * expected.max())


def test_conv2d_fft_size_defaults_to_the_kernel_and_refuses_smaller_inputs(rng):
    weight = rng.standard_normal((6, 4, 3, 2))
    assert conv2d_fft_size(weight.shape) == 3
    assert conv2d_fft_eigenvalues(weight).size == 4 * 9
    # Parseval: the operator's squared Frobenius norm is n*n times the kernel's
    assert conv2d_fft_eigenvalues(weight, 5).sum() == pytest.approx(25 * np.sum(weight ** 2), rel=1e-12)
    np.testing.assert_allclose(conv2d_fft_eigenvalues(weight, 5, normalize="N"),
                               conv2d_fft_eigenvalues(weight, 5) / (6 * 25), rtol=1e-12)
    with pytest.raises(ValueError, match="conv2d_fft_size=2 is smaller than the kernel"):
        conv2d_fft_eigenvalues(weight, 2)
    with pytest.raises(ValueError, match="conv2d_fft_eigenvalues"):
        layer_matrices(weight, "Conv2d", conv2d="fft")


def test_conv2d_stacked_is_the_unfolded_matrix(rng):
    weight = rng.standard_normal((6, 5, 3, 2))
    (matrix,) = layer_matrices(weight, "Conv2d", conv2d="stacked")
    assert matrix.label == "" and matrix.matrix.shape == (3 * 2 * 6, 5)
    # im2col row by row: block (i, j) of the stacked matrix is the kernel slice at (i, j)
    unfolded = np.vstack([weight[:, :, i, j] for i in range(3) for j in range(2)])
    np.testing.assert_array_equal(matrix.matrix, unfolded)
    # a second route to the same spectrum: W^T W = sum over kernel positions of W_ij^T W_ij (unscaled)
    gram = sum(weight[:, :, i, j].T @ weight[:, :, i, j] for i in range(3) for j in range(2))
    np.testing.assert_allclose(eigenvalues(matrix.matrix), np.linalg.eigvalsh(gram), rtol=1e-9)


def test_shuffled_keeps_the_entries_and_is_seeded(rng):
    w = rng.standard_normal((7, 4))
    s = shuffled(w, 3)
    assert s.shape == w.shape and not np.array_equal(s, w)
    np.testing.assert_array_equal(np.sort(s.ravel()), np.sort(w.ravel()))
    np.testing.assert_array_equal(s, shuffled(w, 3))


def test_shuffled_copies_into_the_requested_type_in_the_order_of_a_permutation(rng):
    w = rng.standard_normal((9, 5))[:, ::2]  # a strided view: copied once, in C order
    expected = np.random.default_rng(4).permutation(np.ascontiguousarray(w).ravel()).reshape(w.shape)
    np.testing.assert_array_equal(shuffled(w, 4), expected)
    narrow = shuffled(w, 4, dtype=np.float32)
    assert narrow.dtype == np.float32
    np.testing.assert_array_equal(narrow, expected.astype(np.float32))


def _delta_modulus(values, delta):
    """sup_x (F(x + delta) - F(x - delta)) of the empirical CDF F of ``values``: how far a KS
    distance to them can move when each of them moves by at most delta."""
    values = np.sort(values)
    return float(np.max(np.searchsorted(values, values + 2 * delta, side="right")
                        - np.searchsorted(values, values, side="left"))) / values.size


@pytest.mark.parametrize("kind", ["gaussian", "heavy-tailed entries", "low rank + noise"])
@pytest.mark.parametrize("shape", [(600, 240), (240, 600)])
def test_shuffled_eigenvalues_are_the_shuffled_matrix_s_to_float32_accuracy(rng, shape, kind):
    if kind == "gaussian":
        w = rng.standard_normal(shape)
    elif kind == "heavy-tailed entries":  # Student t(3): large entries, the cause of correlation traps
        w = rng.standard_t(3, shape)
    else:
        w = rng.standard_normal(shape) + 2.0 * rng.standard_normal((shape[0], 4)) @ rng.standard_normal((4, shape[1]))
    w = w.astype(np.float32)
    n_rows, m_cols = max(shape), min(shape)
    # the second route: the same permutation (Generator.permutation), a float64 SVD
    expected = svd_eigenvalues(np.random.default_rng(11).permutation(w.ravel()).reshape(shape))
    values = shuffled_eigenvalues(w, 11)
    assert values.dtype == np.float64 and values.shape == (m_cols,) and np.all(np.diff(values) >= 0)
    # the a-priori bound of the docstring: (N + M) eps32 ||W||_F^2
    delta = (n_rows + m_cols) * EPS32 * float(np.sum(w.astype(np.float64) ** 2))
    error = float(np.max(np.abs(values - expected)))
    assert error <= delta
    # the two statistics of the randomization check move only within what delta allows
    original = svd_eigenvalues(w)
    assert abs(esd_distance(original, values) - esd_distance(original, expected)) <= _delta_modulus(expected, error)
    edge = fit_marchenko_pastur(expected, (n_rows, m_cols)).bulk_edge
    near_edge = int(np.sum(np.abs(expected - edge) <= 2 * error))
    traps = fit_marchenko_pastur(values, (n_rows, m_cols)).num_spikes
    assert abs(traps - fit_marchenko_pastur(expected, (n_rows, m_cols)).num_spikes) <= near_edge
    if kind == "heavy-tailed entries":
        assert traps > 0  # the case the check exists for is exercised
    np.testing.assert_allclose(shuffled_eigenvalues(w, 11, normalize="N"), values / n_rows, rtol=1e-12)


def test_shuffled_eigenvalues_refuse_non_finite_entries_and_survive_float32_overflow(rng):
    w = rng.standard_normal((60, 50)).astype(np.float32)
    w[3, 4] = np.nan
    with pytest.raises(ValueError, match="1 of 3000 entries"):
        shuffled_eigenvalues(w, 0)
    # entries whose squares overflow float32: the float64 route takes over
    big = (rng.standard_normal((60, 50)) * 1e20).astype(np.float32)
    expected = svd_eigenvalues(np.random.default_rng(0).permutation(big.ravel()).reshape(big.shape))
    np.testing.assert_allclose(shuffled_eigenvalues(big, 0), expected, rtol=1e-9, atol=1e-9 * expected.max())


@pytest.mark.parametrize("shape", [(300, 120), (120, 300), (96, 96)])
def test_torch_route_agrees_with_numpy_and_a_float64_svd(rng, shape):
    # The GPU route run on the CPU: the float64 Gram route (esd.gram: float64), torch's kernels.
    w = (rng.standard_t(df=3, size=shape) * 0.05).astype(np.float32)
    expected = svd_eigenvalues(w)
    got = eigenvalues(w, device="cpu")
    assert got.dtype == np.float64 and got.shape == (min(shape),) and np.all(np.diff(got) >= 0)
    np.testing.assert_allclose(got, eigenvalues(w, gram="float64"), rtol=1e-9, atol=1e-12 * expected.max())
    assert got[-1] == pytest.approx(expected[-1], rel=1e-6)  # lambda_max
    assert got.sum() == pytest.approx(np.sum(w.astype(np.float64) ** 2), rel=1e-6)  # ||W||_F^2
    np.testing.assert_allclose(eigenvalues(w, normalize="N", device="cpu"), expected / max(shape), rtol=1e-6,
                               atol=1e-9 * expected.max())


def test_torch_route_refuses_non_finite_weights_and_clips_zeros(rng):
    w = rng.standard_normal((40, 10)).astype(np.float32)
    w[5, 5] = np.inf
    with pytest.raises(ValueError, match=r"NaN or Inf \(1 of 400 entries\)"):
        eigenvalues(w, device="cpu")
    rank_one = np.outer(np.arange(1.0, 41.0), np.ones(10))
    values = eigenvalues(rank_one, device="cpu")
    assert np.all(values >= 0) and values[-1] == pytest.approx(np.sum(np.arange(1.0, 41.0) ** 2) * 10)


def test_device_cpu_is_numpy_and_auto_falls_back_to_it_without_a_gpu(monkeypatch):
    assert resolve_device("cpu") is None
    # no GPU driver: decided without importing torch
    monkeypatch.setattr(spectrum, "GPU_DEVICE_NODES", ("/nonexistent/nvidiactl",))
    assert resolve_device("auto") is None
    # a driver node but no usable GPU (torch says so): still the CPU
    import torch

    monkeypatch.setattr(spectrum, "GPU_DEVICE_NODES", (__file__,))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda") == "cuda"


def test_device_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(spectrum, "GPU_DEVICE_NODES", ("/nonexistent/nvidiactl",))
    with pytest.raises(ValueError, match="device: cuda, but this job sees no CUDA GPU.*device: auto.*device: cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'; valid: auto, cpu, cuda"):
        resolve_device("gpu")


@pytest.mark.parametrize("shape", [(300, 40), (40, 300), (37, 37)])
@pytest.mark.parametrize("block_entries", [1, 500, 10**9])
def test_the_streamed_gram_matrix_is_the_float64_product(rng, shape, block_entries):
    """Blocks of the long side (M lines at a time, a dozen or so, or the whole) sum to W^T W of
    the float64 matrix, computed here in one product (a second method)."""
    w = rng.standard_normal(shape).astype(np.float32)
    gram, n_rows = spectrum.gram_matrix(w, block_entries)
    oriented = np.asarray(w, dtype=np.float64)
    oriented = oriented if shape[0] >= shape[1] else oriented.T
    assert n_rows == max(shape) and gram.shape == (min(shape), min(shape)) and gram.dtype == np.float64
    expected = oriented.T @ oriented
    # the upper triangle is the Gram matrix (below it: unspecified)
    np.testing.assert_allclose(np.triu(gram), np.triu(expected), rtol=1e-12, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_the_gram_matrix_is_the_same_without_the_ctypes_syrk(rng, monkeypatch, precision):
    """Where numpy's BLAS has no usable SYRK, numpy's own product gives the same upper triangle,
    bit for bit, and so the same eigenvalues."""
    w = rng.standard_normal((9000, 300)).astype(np.float32)
    for stored in (w, w.T):
        fast = spectrum.gram_matrix(stored, precision=precision)[0]
        with monkeypatch.context() as patched:
            patched.setattr(spectrum.blas, "syrk_upper", lambda block, out: False)
            plain = spectrum.gram_matrix(stored, precision=precision)[0]
            plain_values = eigenvalues(stored, gram=precision)
        assert np.triu(fast).tobytes() == np.triu(plain).tobytes()
        assert eigenvalues(stored, gram=precision).tobytes() == plain_values.tobytes()


def test_a_non_finite_entry_in_a_later_block_is_refused_with_the_count(rng):
    w = rng.standard_normal((400, 20)).astype(np.float32)
    w[390, 3], w[5, 1] = np.inf, np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf \(2 of 8000 entries\)"):
        spectrum.gram_matrix(w, block_entries=100)


def test_the_torch_route_takes_bf16_weights_as_mapped():
    """bf16 weights arrive as ml_dtypes arrays (the model cache's stored dtype); the torch route
    (config esd.device, here on the CPU) widens them exactly, as the numpy route does."""
    import ml_dtypes

    weight = np.random.default_rng(0).standard_normal((40, 30)).astype(ml_dtypes.bfloat16)
    widened = weight.astype(np.float32)
    np.testing.assert_array_equal(spectrum.eigenvalues(weight, device="cpu"), spectrum.eigenvalues(widened, device="cpu"))
    np.testing.assert_array_equal(spectrum.eigenvalues(weight), spectrum.eigenvalues(widened))
