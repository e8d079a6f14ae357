"""The ctypes SYRK of numpy's own BLAS (zooscope.spectra.blas) against numpy's product."""
import numpy as np
import pytest

from zooscope.spectra import blas

needs_syrk = pytest.mark.skipif(not blas.available(), reason="this numpy's BLAS has no 64-bit cblas_?syrk")


@pytest.fixture
def rng():
    return np.random.default_rng(5)


def views(w, lines):
    """A block of lines of w (N x M) read in place: rows contiguous (w as stored) and columns
    contiguous (a slice of the transpose's columns, as a wide weight's blocks are)."""
    wide = np.ascontiguousarray(w.T)
    return {"rows": w[lines], "columns": wide[:, lines].T}


@needs_syrk
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_the_upper_triangle_is_numpys_product_bit_for_bit_and_the_lower_is_left(rng, dtype, layout):
    w = rng.standard_normal((700, 90)).astype(dtype)
    block = views(w, slice(100, 600))[layout]
    out = np.full((90, 90), 7.0, dtype=dtype)
    assert blas.syrk_upper(block, out)
    upper, lower = np.triu_indices(90), np.tril_indices(90, -1)
    assert out[upper].tobytes() == (block.T @ block)[upper].tobytes()  # numpy's own SYRK, then mirrored
    assert (out[lower] == 7.0).all()
    # and against the float64 product (a second method)
    wide = np.asarray(block, dtype=np.float64)
    np.testing.assert_allclose(out[upper], (wide.T @ wide)[upper], rtol=1e-4 if dtype == np.float32 else 1e-12,
                               atol=1e-4 * np.abs(wide).max() ** 2)


@needs_syrk
def test_a_single_line_or_column(rng):
    for shape in ((1, 40), (40, 1)):
        block = rng.standard_normal(shape)
        out = np.zeros((shape[1], shape[1]))
        assert blas.syrk_upper(block, out)
        np.testing.assert_array_equal(np.triu(out), np.triu(block.T @ block))


def test_what_blas_cannot_read_in_place_is_left_to_numpy(rng):
    w = rng.standard_normal((60, 30))
    out = np.full((30, 30), 3.0)
    assert not blas.syrk_upper(w[::2, ::2], np.zeros((15, 15)))  # neither rows nor columns contiguous
    assert not blas.syrk_upper(w, out.astype(np.float32))  # out's dtype is not the block's
    assert not blas.syrk_upper(w, np.zeros((29, 29)))  # nor its shape
    assert not blas.syrk_upper(w, np.zeros((30, 30), order="F"))  # out must be C-ordered
    assert not blas.syrk_upper(w.astype(np.float16), np.zeros((30, 30), dtype=np.float16))  # no half SYRK
    assert not blas.syrk_upper(w[:0], out) and (out == 3.0).all()  # an empty block


def test_numpys_pypi_wheels_have_it():
    """The PyPI wheels bundle scipy-openblas with 64-bit integers: there the SYRK must be found
    (else the Gram route silently loses its speed), and so must the two-stage eigensolver."""
    blas_info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    if blas_info.get("name") != "scipy-openblas":
        pytest.skip(f"numpy built with {blas_info.get('name')}")
    assert blas.available() and blas.two_stage_available()


needs_two_stage = pytest.mark.skipif(not blas.two_stage_available(),
                                     reason="this numpy's LAPACK has no 64-bit two-stage reduction")


@needs_two_stage
def test_the_two_stage_eigenvalues_are_an_svds_on_any_threads(rng):
    from threadpoolctl import threadpool_limits

    w = rng.standard_normal((1600, 1536))  # large enough for threaded products inside
    gram = w.T @ w
    expected = np.linalg.svd(w, compute_uv=False)[::-1] ** 2  # a second method: squared singular values
    for threads in (1, 2):  # no more than this machine's cores: oversubscribed OpenBLAS threads spin
        with threadpool_limits(limits=threads):
            lower = np.asfortranarray(np.tril(gram))  # only the lower triangle is read
            values = blas.eigvalsh_two_stage(lower)
        np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12 * expected.max())


@needs_two_stage
def test_the_two_stage_solver_takes_only_a_writeable_fortran_float64_square(rng):
    gram = np.cov(rng.standard_normal((50, 200)))
    for unusable in (gram.astype(np.float32), np.ascontiguousarray(gram[:, :49]), np.zeros((0, 0))):
        assert blas.eigvalsh_two_stage(np.asfortranarray(unusable)) is None
    assert blas.eigvalsh_two_stage(np.ascontiguousarray(gram)) is None  # C order: refused, not misread
    frozen = np.asfortranarray(gram)
    frozen.flags.writeable = False
    assert blas.eigvalsh_two_stage(frozen) is None
    np.testing.assert_allclose(blas.eigvalsh_two_stage(np.asfortranarray(gram)), np.linalg.eigvalsh(gram),
                               rtol=0, atol=1e-13 * np.abs(gram).max())


@needs_two_stage
def test_a_matrix_that_is_not_finite_is_refused():
    for bad_value in (np.nan, np.inf):
        bad = np.asfortranarray(np.eye(4))
        bad[2, 1] = bad_value  # in the lower triangle, the one read
        with pytest.raises(ValueError, match="NaN or Inf"):
            blas.eigvalsh_two_stage(bad)


@needs_two_stage
def test_any_band_width_gives_the_eigenvalues(rng):
    """The band's width changes the work's split between the two stages, not the eigenvalues;
    sizes 1 and 2 and a band as wide as the matrix are the edge cases of the first stage."""
    for m in (1, 2, 7, 130):
        w = rng.standard_normal((m + 5, m))
        expected = np.linalg.svd(w, compute_uv=False)[::-1] ** 2  # a second method
        for band in (1, 2, 16, 48, m, m + 10):
            values = blas.eigvalsh_two_stage(np.asfortranarray(w.T @ w), band=band)
            np.testing.assert_allclose(values, expected, rtol=0, atol=1e-13 * expected.max())


@needs_two_stage
def test_a_matrix_near_the_ends_of_float64_needs_no_scaling(rng):
    """dsyevd_2stage scales a matrix whose largest entry is beyond 1e+-146 first; the routines it
    calls guard their own squares and norms, so eigvalsh_two_stage does not: this shows they do."""
    w = rng.standard_normal((60, 40))
    expected = np.linalg.svd(w, compute_uv=False)[::-1] ** 2
    for scale in (1e-310, 1e-160, 1e160, 1e305):
        values = blas.eigvalsh_two_stage(np.asfortranarray(w.T @ w * scale))
        np.testing.assert_allclose(values / scale, expected, rtol=0, atol=1e-13 * expected.max())


def test_the_core_type_is_the_one_threadpoolctl_reads_and_picks_the_two_stage_threshold(monkeypatch):
    from threadpoolctl import threadpool_info

    numpy_openblas = [info for info in threadpool_info()
                      if info.get("internal_api") == "openblas" and "numpy" in info.get("filepath", "")]
    if not numpy_openblas:
        pytest.skip("numpy's BLAS is not OpenBLAS")
    assert blas.core_type() == numpy_openblas[0]["architecture"]
    for core, expected in (("SkylakeX", blas.TWO_STAGE_FROM_AVX512), ("SAPPHIRERAPIDS", blas.TWO_STAGE_FROM_AVX512),
                           ("Haswell", blas.TWO_STAGE_FROM), ("Zen", blas.TWO_STAGE_FROM), (None, blas.TWO_STAGE_FROM)):
        monkeypatch.setattr(blas, "core_type", lambda core=core: core)
        assert blas.two_stage_from() == expected
