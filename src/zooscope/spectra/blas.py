"""Two LAPACK/BLAS calls of numpy's own OpenBLAS that numpy does not offer: one triangle of a Gram
matrix (:func:`syrk_upper`) and the two-stage symmetric eigensolver (:func:`eigvalsh_two_stage`).

``a.T @ a`` in numpy is a SYRK (half a GEMM's work) followed by a copy of the computed triangle
into the other one, element by element across rows. For the Gram route's blocks that copy is a
third of the product's time (VGG16's 4096 x 25088 classifier: 1.4 s of float32 products in blocks
of 4096 lines against 1.0 s for the SYRKs alone, 2026-12-01), and it is wasted: LAPACK's
eigensolver reads one triangle. :func:`syrk_upper` calls the same library's ``cblas_?syrk``
through ctypes for one triangle (the upper one, which numpy computes before mirroring it), with
the same kernels and threads as numpy's own call (its thread limit is the library's).

LAPACK's two-stage reduction (``dsyevd_2stage``'s) reduces the matrix to a band first
(matrix-matrix products) and the band to tridiagonal form in cache-sized pieces, where ``dsyevd``
(numpy's ``eigvalsh``) does the whole reduction in memory-bound matrix-vector products. For
eigenvalues alone, two matrices at once on one thread each (as an esd job solves them), 2026-12-01:
at M = 4096 1.84 s against ``dsyevd``'s 3.1 s (AVX-512 kernels), 2.52 against 3.41 s (AVX2); at
2048 0.29-0.31 against 0.36-0.38 s (AVX-512) but 0.39 against 0.33 s (AVX2), hence
:func:`two_stage_from`. :func:`eigvalsh_two_stage` calls its routines one by one to choose the
band's width (:data:`TWO_STAGE_BAND`: 5-8% faster than ``dsyevd_2stage``'s at 3072 and 4096).
Neither eigensolver's bytes are independent of the BLAS threads in general: from one thread to
two, ``dsyevd``'s changed at every size measured (1000 to 4096), the two-stage reduction's at
1000 (AVX-512) and 2500, by 3e-15 to 2e-14 of lambda_max, and not at 1536, 1792, 2048, 3072 or
4096.

Only numpy builds that bundle OpenBLAS with 64-bit integers and suffixed symbols (the PyPI wheels:
``scipy_cblas_ssyrk64_``, ``scipy_dsytrd_sy2sb_64_``; also without ``scipy_``) are used; elsewhere
:func:`syrk_upper` returns False and the caller multiplies with numpy, and
:func:`eigvalsh_two_stage` returns None.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS, _UPPER = 101, 111, 112, 121
_SUFFIXED = ("scipy_cblas_{}syrk64_", "cblas_{}syrk64_")  # 64-bit integer interfaces only


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


# The Fortran routines of the two-stage reduction, called one by one (with the 64-bit integer
# interface's suffix): LAPACKE_dsyevd_2stage fixes the band's width at LAPACK's default, 32.
_TWO_STAGE_ROUTINES = ("dlansy", "dsytrd_sy2sb", "dsytrd_sb2st", "dsterf")
_FORTRAN_NAMES = ("scipy_{}_64_", "{}_64_")
# The band's width of the two-stage reduction: its first stage (matrix-matrix products) gains from
# a wider band, its second (the band to tridiagonal, memory-bound) loses. Eigenvalues only, two
# matrices at once on one thread each, 2026-12-01: at M = 4096 64 took 1.84 s against LAPACK's
# default 32's 1.99 s (AVX-512 kernels; the best, 56: 1.81) and 2.52 against 2.64 s (AVX2; 48:
# 2.49); at 3072 0.85 against 0.90 s and 1.16 against 1.17 s; at 2048 0.31 against 0.30 s. A
# multiple of 32 as the default: 48 and 56 also changed the eigenvalues' last bits with the BLAS
# threads at M = 1536, 2048 and 3072 (AVX-512), 32 and 64 did not (at 1000 and 2500 all do).
TWO_STAGE_BAND = 64


# From which size M on eigvalsh_two_stage beats numpy's eigvalsh (two matrices at once, one thread
# each, as an esd job runs them; 2026-12-01): on AVX-512 kernels from about 1792 on (1792: 0.195
# against 0.222 s; 2048: 0.29 against 0.36-0.38 s; 1536: 0.137 against 0.131 s), on AVX2 ones
# between 2048 and 3072 (2048: 0.385 against 0.333 s; 3072: 1.13 against 1.30 s).
TWO_STAGE_FROM, TWO_STAGE_FROM_AVX512 = 3072, 1792
# OpenBLAS's names (openblas_get_corename, lower case) of its x86 kernels with AVX-512
_AVX512_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})


@functools.cache
def core_type() -> str | None:
    """OpenBLAS's name for the kernels numpy's BLAS runs (``openblas_get_corename``: the detected
    CPU's, or OPENBLAS_CORETYPE's), or None where numpy's BLAS is not such an OpenBLAS."""
    library = _numpy_openblas()
    for name in ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename"):
        function = getattr(library, name, None) if library is not None else None
        if function is not None:
            function.restype, function.argtypes = ctypes.c_char_p, []
            return (function() or b"").decode(errors="replace").strip() or None
    return None


def two_stage_from() -> int:
    """The size M from which zooscope.spectra.spectrum solves a Gram matrix by
    :func:`eigvalsh_two_stage` (where it is faster than ``eigvalsh`` on these kernels)."""
    return TWO_STAGE_FROM_AVX512 if (core_type() or "").lower() in _AVX512_CORES else TWO_STAGE_FROM


@functools.cache
def _two_stage_functions() -> dict | None:
    """{name: Fortran routine} of :data:`_TWO_STAGE_ROUTINES` in the library numpy is linked with, or None."""
    library = _numpy_openblas()
    for pattern in _FORTRAN_NAMES if library is not None else ():
        found = {name: getattr(library, pattern.format(name), None) for name in _TWO_STAGE_ROUTINES}
        if all(found.values()):
            for function in found.values():
                function.restype = None  # every argument by reference, then the strings' lengths
            found["dlansy"].restype = ctypes.c_double
            return found
    return None


def two_stage_available() -> bool:
    """Whether :func:`eigvalsh_two_stage` runs on this numpy's LAPACK."""
    return _two_stage_functions() is not None


def eigvalsh_two_stage(lower: np.ndarray, band: int = TWO_STAGE_BAND) -> np.ndarray | None:
    """Eigenvalues, ascending, of the symmetric matrix whose lower triangle ``lower`` holds (M x M
    float64, Fortran-ordered, writeable: it is overwritten), by LAPACK's two-stage reduction
    (``dsytrd_sy2sb`` to a band of ``band`` sub-diagonals, ``dsytrd_sb2st`` to tridiagonal form,
    ``dsterf``'s eigenvalues): what ``dsyevd_2stage`` computes for eigenvalues alone, with the
    band's width chosen (:data:`TWO_STAGE_BAND`). ``dsyevd_2stage`` also scales a matrix whose
    largest entry is beyond 1e+-146 first; the routines need not (entries of 1e-310 to 1e305 give
    the eigenvalues to 3e-15 unscaled: tested). None (``lower`` untouched) where this numpy's LAPACK
    has no such routines. Raises ValueError for NaN or Inf entries and ``numpy.linalg.LinAlgError``
    where the eigensolver does not converge (as ``eigvalsh`` does).

    ctypes releases the GIL for the calls, so threads run several at once (each with the BLAS
    threads the library is limited to).
    """
    routines = _two_stage_functions()
    m = lower.shape[0] if lower.ndim == 2 else -1
    if (routines is None or lower.dtype != np.float64 or lower.shape != (m, m) or not lower.flags.f_contiguous
            or not lower.flags.writeable or m == 0):
        return None
    integer, length = ctypes.c_int64, ctypes.c_size_t(1)  # length: of a one-character argument
    n, info = integer(m), integer(0)
    address = lower.ctypes.data_as(ctypes.c_void_p)
    largest = routines["dlansy"](b"M", b"L", ctypes.byref(n), address, ctypes.byref(n), None, length, length)
    if not np.isfinite(largest):
        raise ValueError(f"the matrix has NaN or Inf entries (M = {m})")
    kd = integer(max(1, min(band, m - 1)))
    rows = integer(kd.value + 1)
    banded = np.empty((m, rows.value))  # Fortran (kd + 1) x M
    diagonal, off_diagonal, tau, query, query_2 = np.empty(m), np.empty(m), np.empty(m), np.empty(1), np.empty(1)

    def pointer(array):
        return array.ctypes.data_as(ctypes.c_void_p)

    def reduce_to_band(work, size):
        routines["dsytrd_sy2sb"](b"L", ctypes.byref(n), ctypes.byref(kd), address, ctypes.byref(n), pointer(banded),
                                 ctypes.byref(rows), pointer(tau), pointer(work), ctypes.byref(integer(size)),
                                 ctypes.byref(info), length)

    def reduce_to_tridiagonal(householder, householder_size, work, size):
        routines["dsytrd_sb2st"](b"Y", b"N", b"L", ctypes.byref(n), ctypes.byref(kd), pointer(banded),
                                 ctypes.byref(rows), pointer(diagonal), pointer(off_diagonal), pointer(householder),
                                 ctypes.byref(integer(householder_size)), pointer(work), ctypes.byref(integer(size)),
                                 ctypes.byref(info), length, length, length)

    reduce_to_band(query, -1)  # the workspace query
    size = max(1, int(query[0]))
    reduce_to_band(np.empty(size), size)
    _check(info, "dsytrd_sy2sb", m)
    reduce_to_tridiagonal(query, -1, query_2, -1)
    householder_size, size = max(1, int(query[0])), max(1, int(query_2[0]))
    reduce_to_tridiagonal(np.empty(householder_size), householder_size, np.empty(size), size)
    _check(info, "dsytrd_sb2st", m)
    routines["dsterf"](ctypes.byref(n), pointer(diagonal), pointer(off_diagonal), ctypes.byref(info))
    if info.value > 0:
        raise np.linalg.LinAlgError(f"the eigensolver did not converge ({info.value} off-diagonal elements)")
    _check(info, "dsterf", m)
    return diagonal


def _check(info: ctypes.c_int64, routine: str, m: int) -> None:
    if info.value < 0:
        raise ValueError(f"LAPACK's {routine} rejected its argument {-info.value} (M = {m})")


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
