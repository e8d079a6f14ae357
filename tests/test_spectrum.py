import numpy as np
import pytest

from zooscope.spectrum import (
    conv2d_fft_eigenvalues, conv2d_fft_shape, conv2d_fft_size, eigenvalues, layer_matrices, oriented_shape, shuffled,
)


def svd_eigenvalues(matrix):
    return np.sort(np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False) ** 2)


@pytest.mark.parametrize("shape", [(200, 80), (80, 200), (64, 64)])
def test_eigenvalues_equal_squared_singular_values(rng, shape):
    w = rng.standard_normal(shape).astype(np.float32)
    values = eigenvalues(w)
    expected = svd_eigenvalues(w)
    assert values.shape == (min(shape),)
    assert np.all(np.diff(values) >= 0)
    np.testing.assert_allclose(values, expected, rtol=1e-9, atol=1e-9 * expected.max())
    # lambda_max and the Frobenius norm to 1e-6 relative, as the norm metrics need.
    assert values[-1] == pytest.approx(expected[-1], rel=1e-6)
    assert values.sum() == pytest.approx(np.sum(np.asarray(w, dtype=np.float64) ** 2), rel=1e-6)


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
