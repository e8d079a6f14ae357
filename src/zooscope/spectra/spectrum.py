"""From a layer's weight tensor to the eigenvalues of its matrices (docs/method.md, "Per matrix").

A layer gives one matrix (Linear, Embedding, Conv1d with kernel 1) or several (the slices of a
Conv1d/Conv2d kernel). Each matrix W is oriented N x M with N >= M and its eigenvalues are those of
X = W^T W, computed from the M x M Gram matrix in float64: as exact as an SVD for the spectrum's top
and the norms, and cheaper (one GEMM plus a symmetric eigensolver). On a GPU (config ``device``)
the same route runs in torch on the device, also in float64. Weights come in their stored dtype
(float32, float16, or bfloat16/float8 as ml_dtypes' numpy types) and are widened block by block.

A Conv2d weight (out, in, kh, kw) is analysed one of four ways (config ``conv2d``):
``slices`` (kh*kw matrices out x in, the paper's choice), ``pooled`` (the same scaled slices, their
eigenvalues pooled into one ESD: WeightWatcher's default view, :func:`pooled_eigenvalues`),
``stacked`` (one matrix (kh*kw*out) x in) or ``fft`` (the convolution as a linear operator on n x n
inputs, whose singular values come from the 2-D FFT of the kernel: :func:`conv2d_fft_eigenvalues`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from zooscope.spectra import blas

CONV2D_METHODS = ("slices", "pooled", "stacked", "fft")
NORMALIZATIONS = ("none", "N")
DEVICES = ("auto", "cpu", "cuda")
# Device nodes of a GPU driver (NVIDIA, AMD ROCm): without one there is no GPU to find, and
# ``device: auto`` decides so without importing torch (about a second in every esd job).
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/kfd")
# float64 entries of one block of the Gram matrix's streamed side (gram_matrix): 32 MiB.
GRAM_BLOCK_ENTRIES = 1 << 22
# config esd.gram: the precision of the Gram matrix's block products (gram_matrix)
GRAM_PRECISIONS = ("float32", "float64")
# lines of one float32 block product of the Gram matrix: float32 partial sums over at most this
# many lines, the blocks summed in float64 (gram_matrix)
GRAM_FLOAT32_LINES = 4096
# eigenvalues below this share of lambda_max are zero in the float32 route (eigenvalues): its
# rounding moves the zero eigenvalues of a rank-deficient matrix to 2e-8 to 9e-8 of lambda_max
# (measured at 100 x 80 to 25088 x 1024), so this is 10 times above that noise
GRAM_FLOAT32_RESOLUTION = 1e-6


@dataclass(frozen=True)
class LayerMatrix:
    """One matrix of a layer: ``label`` names the slice ("" for a layer that is one matrix)."""

    label: str
    matrix: np.ndarray


def layer_matrices(weight: np.ndarray, layer_type: str, *, conv2d: str = "slices") -> list[LayerMatrix]:
    """Split a layer weight (PyTorch layout) into the matrices whose spectra are analysed.

    Linear (out, in) and Embedding (num, dim) are one matrix. Conv2d (out, in, kh, kw) with
    ``conv2d="slices"`` gives kh*kw matrices of out x in, each scaled by sqrt(kh*kw/2) (the
    published Methods rescale Conv2D maps by k/sqrt(2)); ``conv2d="pooled"`` gives the same
    matrices (their eigenvalues are pooled afterwards: :func:`pooled_eigenvalues`). ``conv2d="stacked"`` gives one unscaled
    matrix (kh*kw*out) x in, row (i*kw + j)*out + o holding weight[o, :, i, j]: the unfolded operator
    (im2col), whose W^T W = sum_ij W_ij^T W_ij; it is the operator's own matrix, so it is not
    rescaled. ``conv2d="fft"`` is not a set of real matrices: use :func:`conv2d_fft_eigenvalues`.
    Conv1d (out, in, k) gives k unscaled slices.
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
        if conv2d == "fft":
            raise ValueError("conv2d='fft' has no real matrices; call conv2d_fft_eigenvalues(weight, n)")
        out_channels, in_channels, kh, kw = weight.shape
        if conv2d == "stacked":
            return [LayerMatrix("", weight.transpose(2, 3, 0, 1).reshape(kh * kw * out_channels, in_channels))]
        scale = np.sqrt(kh * kw / 2.0)
        return [
            LayerMatrix(f"{i},{j}", weight[:, :, i, j] * scale) for i in range(kh) for j in range(kw)
        ]
    raise ValueError(f"unknown layer type {layer_type!r}; valid: Linear, Conv1d, Conv2d, Embedding")


def pooled_eigenvalues(rows) -> np.ndarray:
    """One ESD from the eigenvalues of several matrices of a layer (``conv2d="pooled"``): all of
    them, ascending. Every slice is an N x M matrix, so the pooled ESD of kh*kw*M values keeps the
    slices' shape (N, M) for the Marchenko-Pastur columns: for i.i.d. slices each has the same
    MP law, and so has their mixture."""
    return np.sort(np.concatenate([np.asarray(row, dtype=np.float64) for row in rows]))


def _expect_rank(weight: np.ndarray, rank: int, layer_type: str) -> None:
    if weight.ndim != rank:
        raise ValueError(f"a {layer_type} weight has rank {rank}, got shape {tuple(weight.shape)}")


def oriented_shape(matrix: np.ndarray) -> tuple[int, int]:
    """(N, M) with N >= M: the matrix is analysed as N x M."""
    rows, cols = matrix.shape
    return max(rows, cols), min(rows, cols)


def resolve_device(setting: str) -> str | None:
    """The torch device of config ``esd.device``, or None for the numpy (LAPACK) route on the CPU.

    ``cpu``: numpy. ``cuda``: the first CUDA GPU, an error if none is visible. ``auto``: ``cuda``
    where a GPU is visible, else numpy on the CPU.
    """
    from zooscope.config import ConfigError  # a setting's error: the run's, not one model's (zooscope.jobs)

    if setting not in DEVICES:
        raise ConfigError(f"unknown device {setting!r}; valid: {', '.join(DEVICES)}")
    if setting == "cpu":
        return None
    available = _cuda_available()
    if setting == "cuda" and not available:
        raise ConfigError(
            "config esd.device: cuda, but this job sees no CUDA GPU (torch.cuda.is_available() is False); "
            "set esd.device: auto (a GPU where there is one, else the CPU) or esd.device: cpu"
        )
    return "cuda" if available else None


def _cuda_available() -> bool:
    if not any(os.path.exists(node) for node in GPU_DEVICE_NODES):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def eigenvalues(matrix: np.ndarray, *, normalize: str = "none", device: str | None = None,
                gram: str = "float32") -> np.ndarray:
    """Eigenvalues of X = W^T W (squared singular values of W), ascending, float64, length M.

    ``normalize="N"`` divides them by N. Raises ValueError for NaN/Inf entries. ``gram`` is config
    ``esd.gram``, the precision of the Gram matrix's products (:func:`gram_matrix`); the eigensolver
    is float64 either way. ``device`` None computes them with numpy; a torch device ("cuda",
    "cuda:1", "cpu") the same way in torch on that device, all in float64 (see
    :func:`resolve_device`), returned as a numpy array.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; valid: {', '.join(NORMALIZATIONS)}")
    if device is not None:
        return _torch_eigenvalues(matrix, normalize=normalize, device=device)
    return begin_eigenvalues(matrix, normalize=normalize, gram=gram)()


def begin_eigenvalues(matrix: np.ndarray, *, normalize: str = "none",
                      gram: str = "float32") -> Callable[[], np.ndarray]:
    """:func:`eigenvalues` on the CPU in two steps: the Gram matrix's products now
    (:func:`gram_matrix`), its eigensolve in the returned function (:func:`gram_eigenvalues`)."""
    gram_m, n_rows = gram_matrix(matrix, precision=gram)
    single = _float32_products(np.asarray(matrix).dtype, gram)
    return lambda: gram_eigenvalues(gram_m, n_rows, normalize=normalize, float32_products=single)


def gram_eigenvalues(gram_m: np.ndarray, n_rows: int, *, normalize: str = "none",
                     float32_products: bool = False) -> np.ndarray:
    """:func:`eigenvalues` from :func:`gram_matrix`'s result (``gram_m``, ``n_rows``), which the
    eigensolver overwrites; ``float32_products``: whether its products were float32 (then
    eigenvalues below :data:`GRAM_FLOAT32_RESOLUTION` of lambda_max are 0).

    The two steps apart let a job compute several Gram matrices with all its BLAS threads and then
    solve them at once with one each (zooscope.spectra.esd.compute_model_esd). From
    :func:`zooscope.spectra.blas.two_stage_from` on (1792 on AVX-512 kernels, 3072 on others) the
    solver is LAPACK's two-stage one, below it numpy's ``eigvalsh``; both give the same eigenvalues
    to rounding (about 1e-14 of lambda_max).
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; valid: {', '.join(NORMALIZATIONS)}")
    # The transpose is Fortran-ordered with the filled triangle below the diagonal, which is what
    # LAPACK reads with numpy's default UPLO="L" (the faster one: "U" took 10% longer at M = 4096)
    values = blas.eigvalsh_two_stage(gram_m.T) if len(gram_m) >= blas.two_stage_from() else None
    if values is None:
        values = np.linalg.eigvalsh(gram_m.T)
    # The Gram route can return tiny negative values for zero singular values: they are zero.
    values = np.clip(values, 0.0, None)
    if values.size and float32_products:
        # below the float32 products' resolution an eigenvalue is rounding, not spectrum: a
        # rank-deficient matrix keeps exact zeros (which the fit's floor leaves out), not noise
        values[values < GRAM_FLOAT32_RESOLUTION * values.max()] = 0.0
    if normalize == "N":
        values = values / n_rows
    return np.sort(values)


def gram_matrix(matrix: np.ndarray, block_entries: int = GRAM_BLOCK_ENTRIES, *,
                precision: str = "float64") -> tuple[np.ndarray, int]:
    """(the M x M Gram matrix W^T W in float64, N) of a matrix oriented N x M with N >= M: its
    upper triangle, the one numpy's ``a.T @ a`` computes before mirroring it (below the diagonal:
    unspecified; zooscope.spectra.blas computes the triangle alone: the mirror cost a third of the
    products' time). :func:`eigenvalues` reads it as the lower triangle of the transpose.

    The long side is streamed in blocks of lines and the blocks' products (each a SYRK) are summed
    in float64. ``precision="float64"``: each block (about ``block_entries`` entries, at least M
    lines) is widened to float64 in one reused buffer. Why blocks: widening a whole float32 weight
    doubles it in fresh memory (VGG16's 4096 x 25088 classifier: 800 MB, a first touch that costs
    seconds of system time), while a block costs max(32 MiB, 8 M^2 bytes).

    ``precision="float32"`` (config ``esd.gram``'s default): a matrix stored in float32 or narrower
    (bf16, float16 and float8 widen to float32 exactly) has each block of at most
    :data:`GRAM_FLOAT32_LINES` lines multiplied in float32, a float32 SYRK at twice the float64
    one's speed, read in place (no copy) for float32 weights. Each product of two float32 entries
    carries a relative rounding of at most eps32 = 6e-8 and the SYRK's partial sums another per
    addition, so an entry of a block's product is within gamma_L sum_k |w_ki| |w_kj| of the exact
    one (L lines), and the blocks' sum adds only float64 rounding. Measured on real layers (docs/speed.md)
    lambda_max, the norms and the alphas move by 1e-8 to 4e-7 relative; :func:`eigenvalues` reports
    those below :data:`GRAM_FLOAT32_RESOLUTION` of lambda_max as 0. A matrix with a block whose
    largest entry is above 1e15 (its squares near float32's overflow) or below 1e-12 (near its
    subnormals) is multiplied in float64; so is a float64 matrix (a fine-tune's update).
    Raises ValueError for NaN/Inf entries.
    """
    w = np.asarray(matrix)
    wide = w.shape[0] < w.shape[1]  # then W^T W of the oriented matrix is w w^T
    n_rows, m = (w.shape[1], w.shape[0]) if wide else w.shape
    single = _float32_products(w.dtype, precision)
    if single:
        lines = max(1, min(n_rows, GRAM_FLOAT32_LINES))
        in_place = w.dtype == np.float32  # a view of the weight is the block: no copy
        storage = None if in_place else np.empty(lines * m, dtype=np.float32)
    else:
        lines = max(1, min(n_rows, max(m, block_entries // max(m, 1))))
        storage = np.empty(lines * m)
    gram = product = None
    for start in range(0, n_rows, lines):
        count = min(lines, n_rows - start)
        part = w[:, start:start + count].T if wide else w[start:start + count]
        if storage is None:
            block = part
        else:
            block = storage[: count * m].reshape(m, count).T if wide else storage[: count * m].reshape(count, m)
            np.copyto(block, part)
        largest = max(float(block.max()), -float(block.min())) if block.size else 0.0  # NaN if any entry is
        if not np.isfinite(largest):
            bad = int(np.size(w) - np.count_nonzero(np.isfinite(w)))
            raise ValueError(f"weights contain NaN or Inf ({bad} of {w.size} entries)")
        if single and not (largest == 0.0 or 1e-12 <= largest <= 1e15):
            # out of float32's safe range (squares near overflow or subnormals): all in float64
            return gram_matrix(matrix, block_entries, precision="float64")
        if gram is None and block.dtype == np.float64:
            target = np.zeros((m, m))  # the first float64 product is the sum so far
        else:
            if product is None:
                product = np.zeros((m, m), dtype=block.dtype)
            target = product
        if not blas.syrk_upper(block, target):
            target = np.matmul(block.T, block, out=target)  # numpy runs b.T @ b as one SYRK
        if gram is None:
            gram = target.astype(np.float64, copy=False)  # the float32 buffer is copied: it is reused
        else:
            gram += target
    return (np.zeros((m, m)) if gram is None else gram), n_rows


def _float32_products(dtype: np.dtype, precision: str) -> bool:
    """Whether :func:`gram_matrix` multiplies a matrix of ``dtype`` in float32 (config ``esd.gram``)."""
    if precision not in GRAM_PRECISIONS:
        raise ValueError(f"unknown Gram precision {precision!r}; valid: {', '.join(GRAM_PRECISIONS)}")
    return precision == "float32" and dtype != np.float64 and dtype.itemsize <= 4


def _torch_eigenvalues(matrix, *, normalize: str, device: str) -> np.ndarray:
    """:func:`eigenvalues` in torch on ``device``: the same Gram route, in float64 there."""
    import torch

    # The weights travel in their own precision (float32: half the bytes of float64) and are
    # widened on the device, where the Gram matrix is accumulated in float64. bf16/f8 (ml_dtypes'
    # types, which torch does not take from numpy) travel as float32: an exact widening.
    matrix = np.ascontiguousarray(matrix)
    if matrix.dtype.kind != "f":
        matrix = matrix.astype(np.float32)
    w = torch.as_tensor(matrix).to(device).to(torch.float64)
    finite = torch.isfinite(w)
    if not bool(finite.all()):
        bad = int(w.numel() - finite.sum().item())
        raise ValueError(f"weights contain NaN or Inf ({bad} of {w.numel()} entries)")
    if w.shape[0] < w.shape[1]:
        w = w.T
    values = torch.linalg.eigvalsh(w.T @ w).clamp_(min=0.0)  # ascending, like numpy's
    if normalize == "N":
        values = values / w.shape[0]
    return np.sort(values.cpu().numpy())


def conv2d_fft_size(kernel_shape, n: int | None = None) -> int:
    """The input size n of the ``fft`` method: ``n`` if given, else the kernel size max(kh, kw).

    Why the kernel size by default: it is the smallest n on which the kernel fits without
    wrapping onto itself, and it gives kh*kw*min(out, in) eigenvalues for a square kernel,
    as many as the ``slices`` method, so ``min_evals`` and the tail fits see comparable
    sample sizes. A larger n samples the same frequency response (the kernel's symbol) on a
    finer grid of frequencies: more eigenvalues from the same continuous spectrum.
    """
    kh, kw = kernel_shape[2:]
    if n is None:
        return int(max(kh, kw))
    if n < max(kh, kw):
        raise ValueError(
            f"conv2d_fft_size={n} is smaller than the kernel ({kh} x {kw}); set conv2d_fft_size to at "
            f"least {max(kh, kw)} or leave it empty (null) for the kernel size"
        )
    return int(n)


def conv2d_fft_shape(kernel_shape, n: int) -> tuple[int, int]:
    """(N, M) of the Conv2d operator on n x n inputs, a (out*n*n) x (in*n*n) matrix, N >= M."""
    out_channels, in_channels = kernel_shape[:2]
    return max(out_channels, in_channels) * n * n, min(out_channels, in_channels) * n * n


def analysed_shape(shape, layer_type: str, *, conv2d: str = "slices", fft_size: int | None = None
                   ) -> tuple[int, int]:
    """(N, M), N >= M, of the matrices a layer of this weight shape is analysed as (what
    :func:`layer_matrices` or the ``fft`` method gives), from its shape alone: a layer that
    fails keeps its shape in layers.tsv."""
    shape = [int(d) for d in shape]
    if layer_type == "Conv2d" and conv2d == "fft":
        return conv2d_fft_shape(shape, conv2d_fft_size(shape, fft_size))
    rows, cols = shape[0], shape[1]
    if len(shape) == 4 and layer_type == "Conv2d" and conv2d == "stacked":
        rows = shape[0] * shape[2] * shape[3]
    return max(rows, cols), min(rows, cols)


def conv2d_fft_eigenvalues(weight: np.ndarray, n: int | None = None, *, normalize: str = "none") -> np.ndarray:
    """Eigenvalues of A^T A for the Conv2d operator A on n x n inputs with circular padding.

    Sedghi, Gupta & Long (2019): with circular padding A is block-circulant with circulant
    blocks, so the 2-D DFT block-diagonalises it. At each of the n*n frequencies (u, v) the
    block is the out x in matrix of the kernels' 2-D DFT coefficients, and the singular values
    of A are those of all n*n blocks together. Their squares (the eigenvalues of each block's
    Gram matrix), pooled into one ascending array
    of min(out, in)*n*n values, are the layer's ESD (the spectrum of the whole operator, the
    way the paper means it). Unscaled: these are the operator's own singular values.
    ``normalize="N"`` divides by the operator's N (see :func:`conv2d_fft_shape`).
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; valid: {', '.join(NORMALIZATIONS)}")
    w = np.asarray(weight, dtype=np.float64)
    _expect_rank(w, 4, "Conv2d")
    if not np.isfinite(w).all():
        bad = int(np.size(w) - np.count_nonzero(np.isfinite(w)))
        raise ValueError(f"weights contain NaN or Inf ({bad} of {w.size} entries)")
    n = conv2d_fft_size(w.shape, n)
    blocks = np.fft.fft2(w, s=(n, n), axes=(2, 3)).transpose(2, 3, 0, 1)  # (n, n, out, in)
    if blocks.shape[2] < blocks.shape[3]:
        blocks = np.conj(np.swapaxes(blocks, 2, 3))  # B B^H has the same nonzero eigenvalues
    blocks = np.ascontiguousarray(blocks)  # batched matmul runs on BLAS only for contiguous blocks
    # The Gram route of eigenvalues(), per frequency: B^H B is min(out, in) square and Hermitian,
    # and a batched eigvalsh is several times faster than a batched complex SVD.
    values = np.clip(np.linalg.eigvalsh(np.conj(np.swapaxes(blocks, 2, 3)) @ blocks).ravel(), 0.0, None)
    if normalize == "N":
        values = values / conv2d_fft_shape(w.shape, n)[0]
    return np.sort(values)


def shuffled(array: np.ndarray, seed: int, *, dtype=None) -> np.ndarray:
    """The same entries in a random order (seeded): the randomization check's null matrix.

    Shuffling keeps every value, so any large entry stays, but destroys the correlations
    between entries; an ESD that changes under shuffling was shaped by those correlations.
    ``dtype`` (default: the array's) is the copy's type: the array is copied once, into it, and
    shuffled in place (the same order as ``Generator.permutation`` of the flattened array).
    """
    array = np.asarray(array)
    values = np.empty(array.size, dtype=array.dtype if dtype is None else dtype)
    values.reshape(array.shape)[...] = array
    np.random.default_rng(seed).shuffle(values)
    return values.reshape(array.shape)


def shuffled_eigenvalues(matrix: np.ndarray, seed: int, *, normalize: str = "none",
                         device: str | None = None) -> np.ndarray:
    """Eigenvalues of X = W^T W of the matrix with its entries shuffled (:func:`shuffled`), in float32.

    The randomization check's spectrum (docs/method.md) needs no float64: its two statistics, the KS
    distance to the ESD (``rand_distance``) and the count above the Marchenko-Pastur edge
    (``num_traps``), move only when an eigenvalue crosses a point of the other spectrum or the
    edge. So the shuffle is done in one float32 copy, its Gram matrix is a float32 SYRK (2.5x
    faster than the float64 one) and its eigenvalues come from LAPACK's ``ssyevd`` (1.6x faster
    than ``dsyevd``). Every eigenvalue then lies within delta = (N + M) eps32 ||W||_F^2 of the float64
    one (standard bounds of a float32 dot product and of a backward-stable eigensolver; measured:
    up to 2.6e-5 of lambda_max at 25088 x 4096), so ``rand_distance`` moves by at most the share of
    shuffled eigenvalues within delta of its point and ``num_traps`` only if one lies within delta of
    the edge (docs/speed.md has the measured errors). A Gram matrix that overflows float32 is
    computed again in float64; ``device`` (a torch device) runs the float64 route there.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; valid: {', '.join(NORMALIZATIONS)}")
    if device is not None:
        return eigenvalues(shuffled(matrix, seed), normalize=normalize, device=device)
    w = shuffled(matrix, seed, dtype=np.float32)
    if not np.isfinite(w).all():
        bad = int(w.size - np.count_nonzero(np.isfinite(w)))
        raise ValueError(f"weights contain NaN or Inf ({bad} of {w.size} entries)")
    n_rows = max(w.shape)
    oriented = w.T if w.shape[0] < w.shape[1] else w  # N x M, a view
    m = oriented.shape[1]
    gram = np.zeros((m, m), dtype=np.float32)
    with np.errstate(over="ignore"):  # entries above ~1e19: their squares overflow float32
        # the upper triangle (gram_matrix), whose transpose is a Fortran-ordered lower one: LAPACK
        # reads it in place, where a C-ordered matrix is copied first
        if not blas.syrk_upper(oriented, gram):
            gram = oriented.T @ oriented  # numpy runs it as one SYRK
    if not np.isfinite(gram).all():
        return eigenvalues(w, normalize=normalize)
    from scipy.linalg import eigvalsh  # lazily: 0.25 s of imports an esd job without randomize skips

    values = np.clip(eigvalsh(gram.T, lower=True, driver="evd", overwrite_a=True, check_finite=False), 0.0, None)
    values = values.astype(np.float64)
    if normalize == "N":
        values = values / n_rows
    return np.sort(values)
