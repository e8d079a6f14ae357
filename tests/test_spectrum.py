import numpy as np
import pytest

from zooscope.spectrum import eigenvalues, layer_matrices, oriented_shape


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
