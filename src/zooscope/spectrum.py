"""From a layer's weight tensor to the eigenvalues of its matrices (design.md, "Metric definitions").

A layer gives one matrix (Linear, Embedding, Conv1d with kernel 1) or several (the slices of a
Conv1d/Conv2d kernel). Each matrix W is oriented N x M with N >= M and its eigenvalues are those of
X = W^T W, computed from the M x M Gram matrix in float64: as exact as an SVD for the spectrum's top
and the norms, and cheaper (one GEMM plus a symmetric eigensolver).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONV2D_METHODS = ("slices",)
NORMALIZATIONS = ("none", "N")


@dataclass(frozen=True)
class LayerMatrix:
    """One matrix of a layer: ``label`` names the slice ("" for a layer that is one matrix)."""

    label: str
    matrix: np.ndarray


def layer_matrices(weight: np.ndarray, layer_type: str, *, conv2d: str = "slices") -> list[LayerMatrix]:
    """Split a layer weight (PyTorch layout) into the matrices whose spectra are analysed.

    Linear (out, in) and Embedding (num, dim) are one matrix. Conv2d (out, in, kh, kw) with
    ``conv2d="slices"`` gives kh*kw matrices of out x in, each scaled by sqrt(kh*kw/2) (the
    published Methods rescale Conv2D maps by k/sqrt(2)). Conv1d (out, in, k) gives k unscaled slices.
    """
    weight = np.asarray(weight)
    if layer_type in ("Linear", "Embedding"):
        _expect_rank(weight, 2, layer_type)
        return [LayerMatrix("", weight)]
    if layer_type == "Conv1d":
        _expect_rank(weight, 3, layer_type)
        if weight.shape[2] == 1:
            return [LayerMatrix("", weight[:, :, 0])]
        return [LayerMatrix(str(k), weight[:, :, k]) for k in range(weight.shape[2])]
    if layer_type == "Conv2d":
        _expect_rank(weight, 4, layer_type)
        if conv2d not in CONV2D_METHODS:
            raise ValueError(f"unknown conv2d method {conv2d!r}; valid: {', '.join(CONV2D_METHODS)}")
        kh, kw = weight.shape[2:]
        scale = np.sqrt(kh * kw / 2.0)
        return [
            LayerMatrix(f"{i},{j}", weight[:, :, i, j] * scale) for i in range(kh) for j in range(kw)
        ]
    raise ValueError(f"unknown layer type {layer_type!r}; valid: Linear, Conv1d, Conv2d, Embedding")


def _expect_rank(weight: np.ndarray, rank: int, layer_type: str) -> None:
    if weight.ndim != rank:
        raise ValueError(f"a {layer_type} weight has rank {rank}, got shape {tuple(weight.shape)}")


def oriented_shape(matrix: np.ndarray) -> tuple[int, int]:
    """(N, M) with N >= M: the matrix is analysed as N x M."""
    rows, cols = matrix.shape
    return max(rows, cols), min(rows, cols)


def eigenvalues(matrix: np.ndarray, *, normalize: str = "none") -> np.ndarray:
    """Eigenvalues of X = W^T W (squared singular values of W), ascending, float64, length M.

    ``normalize="N"`` divides them by N. Raises ValueError for NaN/Inf entries.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; valid: {', '.join(NORMALIZATIONS)}")
    w = np.asarray(matrix, dtype=np.float64)
    if not np.isfinite(w).all():
        bad = int(np.size(w) - np.count_nonzero(np.isfinite(w)))
        raise ValueError(f"weights contain NaN or Inf ({bad} of {w.size} entries)")
    if w.shape[0] < w.shape[1]:
        w = w.T
    n_rows = w.shape[0]
    gram = w.T @ w
    values = np.linalg.eigvalsh(gram)
    # The Gram route can return tiny negative values for zero singular values: they are zero.
    values = np.clip(values, 0.0, None)
    if normalize == "N":
        values = values / n_rows
    return np.sort(values)
