"""One triangle of a Gram matrix from numpy's own BLAS, without numpy's mirror copy.

``a.T @ a`` in numpy is a SYRK (half a GEMM's work) followed by a copy of the computed triangle
into the other one, element by element across rows. For the Gram route's blocks that copy is a
third of the product's time (VGG16's 4096 x 25088 classifier: 1.4 s of float32 products in blocks
of 4096 lines against 1.0 s for the SYRKs alone, 2026-12-01), and it is wasted: LAPACK's
eigensolver reads one triangle. :func:`syrk_upper` calls the same library's ``cblas_?syrk``
through ctypes for one triangle (the upper one, which numpy computes before mirroring it), with
the same kernels and threads as numpy's own call (its thread limit is the library's).

Only numpy builds that bundle OpenBLAS with 64-bit integers and suffixed symbols (the PyPI wheels:
``scipy_cblas_ssyrk64_``; also ``cblas_ssyrk64_``) are used; elsewhere :func:`syrk_upper` returns
False and the caller multiplies with numpy.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS, _UPPER = 101, 111, 112, 121
_SUFFIXED = ("scipy_cblas_{}syrk64_", "cblas_{}syrk64_")  # 64-bit integer interfaces only


@functools.cache
def _syrk_functions() -> dict:
    """{numpy dtype: cblas_?syrk} of the BLAS numpy is linked with, where it has them."""
    from threadpoolctl import threadpool_info

    for info in threadpool_info():
        if info.get("internal_api") != "openblas" or "numpy" not in info.get("filepath", ""):
            continue
        try:
            library = ctypes.CDLL(info["filepath"])  # already loaded by numpy: the same instance
        except OSError:
            continue
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
