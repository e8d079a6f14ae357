"""The update of a fine-tune against its base: the spectrum of dW = W - W_base, per layer.

For every matrix of a layer (the same matrices as its own ESD: :func:`zooscope.spectra.esd.layer_eigenvalues`)
this gives the eigenvalues of dW^T dW, the relative size ||dW||_F / ||W_base||_F, and how much dW's
top singular directions overlap the base's. All in float64: dW of two float32 weights is exact there,
while a float32 difference would lose the small updates of a fine-tune to cancellation.

A low-rank update dW = s L R (L: N x r, R: r x M, a LoRA adapter's B and A) is never formed: with
L = Q_L T_L and R^T = Q_R T_R (thin QR), dW = Q_L (s T_L T_R^T) Q_R^T, so the singular values of dW
are those of the r x r core s T_L T_R^T and its singular vectors are Q_L and Q_R times the core's.
The squared singular values are the nonzero eigenvalues of dW^T dW, the same as those of the r x r
product s^2 (L^T L)(R R^T) that the design notes state (it is s^2 X Y with X = T_L^T T_L T_R^T and
Y = T_R, and Y X is core^T core: XY and YX have the same eigenvalues); the QR route gets them from a
symmetric problem, so they come out real and as accurate as an SVD of dW.

Overlap (Hu et al. 2021, "LoRA", section 7: the normalised subspace similarity): with U the top-k
right singular vectors of dW and V the base's (the eigenvectors of X = W^T W behind the ESD, of the
matrix oriented N x M, N >= M), the cosines of the principal angles between the two subspaces are
the singular values of U^T V. ``overlap`` is their mean square ||U^T V||_F^2 / k, 1 when dW acts in
the base's top directions, about k / M for unrelated (random) directions; ``overlap_max`` the
largest cosine. (U has fewer columns when dW has rank below k.) With k >= M the base's top
directions are the whole space and the overlap says nothing: it is NaN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zooscope.spectra import spectrum

# Top singular directions compared by the overlap (config esd.delta_top_k).
DEFAULT_TOP_K = 10
# Up to this short side the top singular vectors come from a full SVD (top_right_vectors).
SMALL_SVD = 256


@dataclass(frozen=True)
class MatrixDelta:
    """One matrix's update: eigenvalues of dW^T dW (ascending; a low-rank update gives its r values,
    a dense one M), ||dW||_F / ||W_base||_F, and the overlap of the top-k singular subspaces."""

    eigenvalues: np.ndarray
    relative_norm: float
    overlap: float
    overlap_max: float


@dataclass(frozen=True)
class LowRankSVD:
    """The thin SVD of s L R from its factors: singular values (descending), the N x r left and the
    M x r right singular vectors."""

    singular_values: np.ndarray
    left: np.ndarray
    right: np.ndarray


def lowrank_svd(left: np.ndarray, right: np.ndarray, scale: float = 1.0) -> LowRankSVD:
    """The SVD of ``scale * left @ right`` (left N x r, right r x M) without forming the product."""
    left = np.asarray(left, dtype=np.float64)
    right = np.asarray(right, dtype=np.float64)
    if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[0]:
        raise ValueError(f"low-rank factors do not chain: {left.shape} times {right.shape}")
    if not (np.isfinite(left).all() and np.isfinite(right).all()):
        raise ValueError("low-rank factors contain NaN or Inf")
    q_left, t_left = np.linalg.qr(left)
    q_right, t_right = np.linalg.qr(right.T)
    u, s, vt = np.linalg.svd(scale * (t_left @ t_right.T))
    return LowRankSVD(s, q_left @ u, q_right @ vt.T)


def lowrank_eigenvalues(left: np.ndarray, right: np.ndarray, scale: float = 1.0, *,
                        normalize: str = "none") -> np.ndarray:
    """The r eigenvalues of dW^T dW for dW = scale * left @ right, ascending (``normalize="N"``:
    divided by the larger side of dW, as :func:`zooscope.spectra.spectrum.eigenvalues` does)."""
    values = np.sort(lowrank_svd(left, right, scale).singular_values ** 2)
    return values / max(left.shape[0], right.shape[1]) if normalize == "N" else values


def top_right_vectors(matrix: np.ndarray, k: int) -> np.ndarray:
    """The top-k right singular vectors of ``matrix`` oriented N x M (N >= M), as M x k.

    A small matrix (M <= SMALL_SVD) by a full SVD; a larger one by ARPACK (scipy's svds, Lanczos
    on W^T W through products with W, to machine precision, from a seeded start vector so that
    the result is deterministic): its cost grows with N M k, not with the N M^2 of a Gram matrix
    and the M^3 of a full decomposition.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    m = matrix.shape[1]
    k = min(k, m)
    if m <= SMALL_SVD or k >= m - 1:
        return np.linalg.svd(matrix, full_matrices=False)[2][:k].T
    from scipy.sparse.linalg import svds

    start = np.random.default_rng(0).standard_normal(m)
    _, values, vt = svds(matrix, k=k, v0=start, solver="arpack", return_singular_vectors="vh")
    return vt[np.argsort(values)[::-1]].T


def subspace_overlap(u: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """(mean squared cosine, largest cosine) of the principal angles between the column spaces of
    two matrices with orthonormal columns (each M x k)."""
    k = min(u.shape[1], v.shape[1])
    if k == 0:
        return math.nan, math.nan
    cosines = np.clip(np.linalg.svd(u.T @ v, compute_uv=False), 0.0, 1.0)
    return float(np.sum(cosines[:k] ** 2) / k), float(cosines[0])


def oriented(matrix: np.ndarray) -> np.ndarray:
    """The matrix as analysed, N x M with N >= M (its transpose when it is wide)."""
    return matrix if matrix.shape[0] >= matrix.shape[1] else matrix.T


def dense_matrix_delta(delta: np.ndarray, base: np.ndarray, *, normalize: str = "none",
                       top_k: int = DEFAULT_TOP_K, device: str | None = None) -> MatrixDelta:
    """An update ``delta`` = dW (formed in float64 from the two weights: :func:`difference`) of the
    matrix ``base`` (the same shape; its own precision)."""
    values = spectrum.eigenvalues(delta, normalize=normalize, device=device)
    overlap = subspace_overlap(top_right_vectors(oriented(delta), top_k), top_right_vectors(oriented(base), top_k)) \
        if np.any(delta) and top_k < min(delta.shape) else (math.nan, math.nan)
    return MatrixDelta(values, relative_norm(np.linalg.norm(delta), base), *overlap)


def lowrank_matrix_delta(left: np.ndarray, right: np.ndarray, scale: float, base: np.ndarray, *,
                         normalize: str = "none", top_k: int = DEFAULT_TOP_K) -> MatrixDelta:
    """The update ``scale * left @ right`` against ``base`` (same shape as the product), from the
    factors: its r eigenvalues, norm and singular vectors come from :func:`lowrank_svd`."""
    base = np.asarray(base, dtype=np.float64)
    if base.shape != (left.shape[0], right.shape[1]):
        raise ValueError(f"a low-rank update of shape {(left.shape[0], right.shape[1])} does not fit a base "
                         f"layer of shape {base.shape}")
    if base.shape[0] < base.shape[1]:  # orient as N x M: (s L R)^T = s R^T L^T
        left, right, base = np.asarray(right).T, np.asarray(left).T, base.T
    svd = lowrank_svd(left, right, scale)
    values = np.sort(svd.singular_values ** 2)
    if normalize == "N":
        values = values / base.shape[0]
    # the right singular vectors of zero singular values span nothing of dW: leave them out
    k = min(top_k, int(np.count_nonzero(svd.singular_values > 0)))
    overlap = subspace_overlap(svd.right[:, :k], top_right_vectors(base, top_k)) \
        if k and top_k < base.shape[1] else (math.nan, math.nan)
    return MatrixDelta(values, relative_norm(math.sqrt(float(np.sum(svd.singular_values ** 2))), base), *overlap)


def relative_norm(delta_norm: float, base: np.ndarray) -> float:
    """||dW||_F / ||W_base||_F (NaN for an all-zero base); the base's norm summed in float64."""
    base_norm = math.sqrt(float(np.einsum("ij,ij->", base, base, dtype=np.float64))) if np.ndim(base) == 2 \
        else float(np.linalg.norm(np.asarray(base, dtype=np.float64)))
    return float(delta_norm) / base_norm if base_norm > 0 else math.nan


def difference(weight: np.ndarray, base_weight: np.ndarray) -> np.ndarray:
    """W - W_base in float64: exact for float32 weights, one float64 array (no widened copies)."""
    if np.shape(weight) != np.shape(base_weight):
        raise ValueError(f"shapes differ: {tuple(np.shape(weight))} and base {tuple(np.shape(base_weight))}")
    return np.subtract(weight, base_weight, dtype=np.float64)


@dataclass(frozen=True)
class LayerDelta:
    """A layer's update, one entry per matrix (slice), in the order of the layer's own ESD rows."""

    slices: list[str]
    matrices: list[MatrixDelta]
    shape: tuple[int, int]

    def eigenvalue_rows(self) -> np.ndarray:
        """The eigenvalues as one (num_matrices, num_values) array (every matrix has as many)."""
        return np.vstack([matrix.eigenvalues for matrix in self.matrices])


def layer_delta(weight: np.ndarray, base_weight: np.ndarray, layer_type: str, *, conv2d: str = "slices",
                normalize: str = "none", conv2d_fft_size: int | None = None, top_k: int = DEFAULT_TOP_K,
                device: str | None = None, gram: str = "float32") -> LayerDelta:
    """The dense update of one layer, matrix by matrix as its ESD sees it (slices, stacked, fft).

    ``gram`` (config ``esd.gram``) changes nothing here: the update is float64, and so is its Gram
    matrix (zooscope.spectra.spectrum.gram_matrix).

    Under ``conv2d="fft"`` the operator is not a real matrix: its update's spectrum is that of the
    kernel's update, the relative norm is the kernels' (the operator's Frobenius norm is n times
    the kernel's, so the ratio is the same) and the overlap is not defined (NaN).
    """
    from zooscope.spectra.esd import layer_eigenvalues

    # The update is formed once, in float64, before any slicing or scaling: scaling each weight
    # in float32 first would round away as much of a small update as a float32 difference.
    delta = difference(weight, base_weight)
    if layer_type == "Conv2d" and conv2d == "fft":
        labels, values, shape = layer_eigenvalues(delta, layer_type, conv2d=conv2d, normalize=normalize,
                                                  conv2d_fft_size=conv2d_fft_size, device=device)
        return LayerDelta(labels, [MatrixDelta(values[0], relative_norm(np.linalg.norm(delta), base_weight),
                                               math.nan, math.nan)], shape)
    matrices = spectrum.layer_matrices(delta, layer_type, conv2d=conv2d)
    bases = spectrum.layer_matrices(base_weight, layer_type, conv2d=conv2d)
    deltas = [dense_matrix_delta(m.matrix, b.matrix, normalize=normalize, top_k=top_k, device=device)
              for m, b in zip(matrices, bases, strict=True)]
    return LayerDelta([m.label for m in matrices], deltas, spectrum.oriented_shape(matrices[0].matrix))


def lowrank_layer_delta(left: np.ndarray, right: np.ndarray, scale: float, base_weight: np.ndarray,
                        layer_type: str, *, normalize: str = "none", top_k: int = DEFAULT_TOP_K) -> LayerDelta:
    """The update ``scale * left @ right`` of a one-matrix layer (Linear, Embedding) from its factors."""
    if layer_type not in ("Linear", "Embedding"):
        raise ValueError(f"a low-rank update of a {layer_type} layer is analysed densely (layer_delta)")
    delta = lowrank_matrix_delta(left, right, scale, base_weight, normalize=normalize, top_k=top_k)
    rows, cols = np.shape(base_weight)
    return LayerDelta([""], [delta], (max(rows, cols), min(rows, cols)))
