"""Two LAPACK/BLAS calls of numpy's own OpenBLAS that numpy does not offer: one triangle of a Gram
matrix (:func:`syrk_upper`) and the two-stage symmetric eigensolver (:func:`eigvalsh_two_stage`).

``a.T @ a`` in numpy is a SYRK (half a GEMM's work) followed by a copy of the computed triangle
into the other one, element by element across rows. For the Gram route's blocks that copy is a
third of the product's time (VGG16's 4096 x 25088 classifier: 1.4 s of float32 products in blocks
of 4096 lines against 1.0 s for the SYRKs alone, 2026-12-01), and it is wasted: LAPACK's
eigensolver reads one triangle. :func:`syrk_upper` calls the same library's ``cblas_?syrk``
through ctypes for one triangle (the upper one, which numpy computes before mirroring it), with
the same kernels and threads as numpy's own call (its thread limit is the library's).

LAPACK's ``dsyevd_2stage`` reduces the matrix to a band first (matrix-matrix products) and the
band to tridiagonal form in cache-sized pieces, where ``dsyevd`` (numpy's ``eigvalsh``) does the
whole reduction in memory-bound matrix-vector products. For eigenvalues alone, on one thread, at
M = 4096: 1.9-2.1 s against 3.1 s (AVX-512 kernels), 2.5-2.8 s against 3.3 s (AVX2); at 3072
0.84 against 1.24 s; at 2048 and below it is no faster or slower (2026-12-01). Its eigenvalues
are the same bytes whatever the BLAS threads (``dsyevd``'s are not: tested).

Only numpy builds that bundle OpenBLAS with 64-bit integers and suffixed symbols (the PyPI wheels:
``scipy_cblas_ssyrk64_``; also ``cblas_ssyrk64_``) are used; elsewhere :func:`syrk_upper` returns
False and the caller multiplies with numpy, and :func:`eigvalsh_two_stage` returns None.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS, _UPPER = 101, 111, 112, 121
_COL_MAJOR = 102
_SUFFIXED = ("scipy_cblas_{}syrk64_", "cblas_{}syrk64_")  # 64-bit integer interfaces only
_TWO_STAGE = ("scipy_LAPACKE_dsyevd_2stage64_", "LAPACKE_dsyevd_2stage64_")


@functools.cache
def _numpy_openblas() -> ctypes.CDLL | None:
    """The OpenBLAS library numpy is linked with (already loaded by numpy: the same instance)."""
    from threadpoolctl import threadpool_info

    for info in threadpool_info():
        if info.get("internal_api") != "openblas" or "numpy" not in info.get("filepath", ""):
            continue
        try:
            return ctypes.CDLL(info["filepath"])
        except OSError:
            continue
    return None


@functools.cache
def _syrk_functions() -> dict:
    """{numpy dtype: cblas_?syrk} of the BLAS numpy is linked with, where it has them."""
    library = _numpy_openblas()
    if library is not None:
        for pattern in _SUFFIXED:
            try:
                found = {np.dtype(np.float32): getattr(library, pattern.format("s")),
                         np.dtype(np.float64): getattr(library, pattern.format("d"))}
            except AttributeError:
                continue
            for dtype, function in found.items():
                scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
                function.restype = None
                function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                     scalar, ctypes.c_void_p, ctypes.c_int64, scalar, ctypes.c_void_p,
                                     ctypes.c_int64]
            return found
    return {}


@functools.cache
def _two_stage_function():
    """LAPACKE_dsyevd_2stage (64-bit integers) of the library numpy is linked with, or None."""
    library = _numpy_openblas()
    for name in _TWO_STAGE if library is not None else ():
        function = getattr(library, name, None)
        if function is not None:
            function.restype = ctypes.c_int64
            function.argtypes = [ctypes.c_int, ctypes.c_char, ctypes.c_char, ctypes.c_int64, ctypes.c_void_p,
                                 ctypes.c_int64, ctypes.c_void_p]
            return function
    return None


def two_stage_available() -> bool:
    """Whether :func:`eigvalsh_two_stage` runs on this numpy's LAPACK."""
    return _two_stage_function() is not None


def eigvalsh_two_stage(lower: np.ndarray) -> np.ndarray | None:
    """Eigenvalues, ascending, of the symmetric matrix whose lower triangle ``lower`` holds (M x M
    float64, Fortran-ordered, writeable: LAPACK overwrites it), by ``dsyevd_2stage``; None
    (``lower`` untouched) where this numpy's LAPACK has no usable one. Raises
    ``numpy.linalg.LinAlgError`` where the eigensolver does not converge (as ``eigvalsh`` does).

    ctypes releases the GIL for the call, so threads run several at once (each with the BLAS
    threads the library is limited to).
    """
    function = _two_stage_function()
    m = lower.shape[0] if lower.ndim == 2 else -1
    if (function is None or lower.dtype != np.float64 or lower.shape != (m, m) or not lower.flags.f_contiguous
            or not lower.flags.writeable or m == 0):
        return None
    values = np.empty(m)
    info = function(_COL_MAJOR, b"N", b"L", m, lower.ctypes.data, m, values.ctypes.data)
    if info > 0:
        raise np.linalg.LinAlgError(f"the eigensolver did not converge ({info} off-diagonal elements)")
    if info in (-1010, -1011):  # LAPACKE could not allocate its workspace
        raise MemoryError(f"LAPACKE_dsyevd_2stage could not allocate its workspace (M = {m})")
    if info < 0:
        raise ValueError(f"LAPACKE_dsyevd_2stage rejected its argument {-info} (M = {m})")
    return values


def available() -> bool:
    """Whether :func:`syrk_upper` runs on this numpy's BLAS."""
    return bool(_syrk_functions())


def syrk_upper(block: np.ndarray, out: np.ndarray) -> bool:
    """Write block^T block into the upper triangle of ``out`` (M x M, C-contiguous, the block's
    dtype), the same call and so the same bytes as numpy's ``block.T @ block`` before its mirror
    copy, leaving the strict lower triangle as it was; False (``out`` untouched) where this numpy's
    BLAS has no usable SYRK or the block is not a strided matrix BLAS can read in place.

    ``block`` (K x M, float32 or float64) may be a view with rows or columns contiguous, such as a
    slice of lines of a weight in either orientation: no copy is made.
    """
    function = _syrk_functions().get(block.dtype)
    k, m = block.shape
    if (function is None or out.dtype != block.dtype or out.shape != (m, m) or not out.flags.c_contiguous
            or not out.flags.writeable or k == 0 or m == 0):
        return False
    size = block.itemsize
    rows, cols = block.strides
    # a single line or column has any stride along its length-1 axis: make it the packed one
    rows = m * size if k == 1 else rows
    cols = k * size if m == 1 and cols != size else cols
    # Row-major, the upper triangle of C = op(A) op(A)^T, op(A) being M x K:
    if cols == size and rows >= m * size and rows % size == 0:
        # the block's rows are contiguous: A is the block (K x M, leading dimension rows), op = ^T
        trans, lda = _TRANS, rows // size
    elif rows == size and cols >= k * size and cols % size == 0:
        # its columns are contiguous: A is block^T (M x K, leading dimension cols), op = identity
        trans, lda = _NO_TRANS, cols // size
    else:
        return False
    function(_ROW_MAJOR, _UPPER, trans, m, k, 1.0, block.ctypes.data, lda, 0.0, out.ctypes.data, m)
    return True
