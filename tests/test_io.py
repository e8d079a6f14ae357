"""io.SafetensorsReader (tensors read as private maps of the file's bytes), the TSV writers and
safe_filename."""
import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as save_torch_file

from zooscope.io import SafetensorsReader, safe_filename, write_rows_tsv, write_tsv
from zooscope.analysis.metrics import LAYER_COLUMNS, layer_rows, layers_frame


@pytest.fixture
def tensors(rng):
    return {
        "w32": rng.standard_normal((30, 7)).astype(np.float32),
        "w16": rng.standard_normal((5, 4, 3)).astype(np.float16),
        "w64": rng.standard_normal(11),
        "count": np.arange(6, dtype=np.int64).reshape(2, 3),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 4), np.float32),
    }


def test_mapped_tensors_equal_what_safetensors_reads(tmp_path, tensors):
    save_file(tensors, str(tmp_path / "t.safetensors"))
    reference = load_file(str(tmp_path / "t.safetensors"))  # the reference package's own reader
    reader = SafetensorsReader(tmp_path / "t.safetensors")
    for key, value in reference.items():
        got = reader.get_tensor(key)
        assert got.dtype == value.dtype and got.shape == value.shape and np.array_equal(got, value), key


def test_writing_to_a_mapped_tensor_never_changes_the_file(tmp_path, tensors):
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    before = path.read_bytes()
    array = SafetensorsReader(path).get_tensor("w32")
    array[:] = 0.0
    assert path.read_bytes() == before
    assert np.array_equal(SafetensorsReader(path).get_tensor("w32"), tensors["w32"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_a_dtype_numpy_lacks_is_mapped_as_ml_dtypes_and_widens_exactly(tmp_path, dtype):
    """bf16/f8 are mapped (no torch, no copy) and widen to float32 as torch widens them."""
    weight = torch.randn(4, 3).to(dtype)
    save_torch_file({"w": weight}, str(tmp_path / "low.safetensors"))
    mapped = SafetensorsReader(tmp_path / "low.safetensors").mapped("w")
    assert mapped.dtype.itemsize == 1 + (dtype == torch.bfloat16) and mapped.shape == (4, 3)
    assert np.array_equal(mapped.astype(np.float32), weight.float().numpy())
    assert torch.equal(SafetensorsReader(tmp_path / "low.safetensors", framework="pt").get_tensor("w"), weight)


def test_a_truncated_file_is_refused_before_anything_is_mapped(tmp_path, tensors):
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(SafetensorError):
        SafetensorsReader(path).get_tensor("w32")


def test_rows_are_written_byte_for_byte_as_pandas_writes_their_frame(tmp_path, rng):
    """The pandas-free writer of the fit job against DataFrame.to_csv (the reference) on a layer
    table with fitted, skipped and failed rows, missing metrics, infinities and text that needs quoting."""
    values = np.sort(rng.pareto(2.0, (2, 80)) + 1.0, axis=1)
    index = {"layers": [
        {"name": "conv", "type": "Conv2d", "depth": 0, "N": 120, "M": 80, "status": "ok", "reason": "",
         "slices": ["0,0", "0,1"], "file": "conv.npy", "rand_file": "conv.rand.npy"},
        {"name": "small", "type": "Linear", "depth": 1, "N": 40, "M": 20, "status": "ok", "reason": "",
         "slices": [""], "file": "small.npy"},
        {"name": "odd\tname", "type": "Linear", "depth": 2, "N": 10, "M": 5, "status": "failed",
         "reason": 'ValueError: "quoted", with\ttab', "slices": [], "file": None},
    ]}
    spectra = {"conv": values, "small": np.linspace(1.0, 2.0, 20)[None, :]}
    rows = layer_rows(index, lambda record, randomized=False: spectra[record["name"]][::-1] if randomized
                      else spectra[record["name"]])
    rows[0]["D"] = float("inf")
    rows[1]["rand_distance"] = np.float64(0.1 + 0.2)
    write_tsv(tmp_path / "pandas.tsv", layers_frame(rows))
    write_rows_tsv(tmp_path / "rows.tsv", LAYER_COLUMNS, rows)
    assert [row["status"] for row in rows] == ["ok", "ok", "skipped", "failed"]
    assert (tmp_path / "rows.tsv").read_bytes() == (tmp_path / "pandas.tsv").read_bytes()


@pytest.mark.parametrize("raw, clean", [
    ("net.0", "net.0"), ("ResNet-50.v1_5", "ResNet-50.v1_5"), ("enc/layer 1:q", "enc_layer_1_q"),
    ("a b/c\\d:\u00e9", "a_b_c_d__"), ("..", "_."), (".hidden", "_hidden"), ("-x", "_x"), ("", "_"),
    ("\u00fcn\u00ef", "_n_"), (3, "3"),
])
def test_safe_filename(raw, clean):
    """One rule for layer, series and metric names: [A-Za-z0-9._-] only, no leading '.' or '-'."""
    assert safe_filename(raw) == clean


def test_the_dtype_table_is_the_one_safetensors_writes_and_reads(tmp_path):
    """Every entry of io.SAFETENSORS_DTYPES against safetensors itself: a torch tensor of its torch
    dtype is stored under its name, and safetensors' numpy reader gives its numpy dtype."""
    import json

    import ml_dtypes

    from zooscope.io import FLOAT_DTYPES, SAFETENSORS_DTYPES, numpy_dtypes

    tensors = {name: torch.zeros(2, dtype=getattr(torch, dtype.torch)) for name, dtype in SAFETENSORS_DTYPES.items()}
    save_torch_file(tensors, str(tmp_path / "all.safetensors"))
    raw = (tmp_path / "all.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert {name: header[name]["dtype"] for name in tensors} == {name: name for name in tensors}
    # BF16 and F8 have no numpy type of numpy's own (ml_dtypes', mapped by SafetensorsReader):
    # safetensors' numpy reader refuses them; every other one it reads as the table says
    numpy_ones = {name: dtype for name, dtype in SAFETENSORS_DTYPES.items() if not hasattr(ml_dtypes, dtype.numpy)}
    assert set(SAFETENSORS_DTYPES) - set(numpy_ones) == {"BF16", "F8_E4M3", "F8_E5M2"}
    save_torch_file({name: tensors[name] for name in numpy_ones}, str(tmp_path / "numpy.safetensors"))
    read = load_file(str(tmp_path / "numpy.safetensors"))
    assert {name: read[name].dtype for name in numpy_ones} == {name: np.dtype(d.numpy) for name, d in numpy_ones.items()}
    assert set(FLOAT_DTYPES) == {name for name in tensors if tensors[name].is_floating_point()}
    mapped = SafetensorsReader(tmp_path / "all.safetensors")
    assert {name: mapped.mapped(name).dtype for name in tensors} == numpy_dtypes()
    assert {name: mapped.mapped(name).dtype.itemsize for name in tensors} == {
        name: tensors[name].element_size() for name in tensors}


def test_open_empty_writes_an_empty_or_absent_file_and_replaces_content(tmp_path):
    from zooscope.io import atomic_path, open_empty

    fresh = tmp_path / "fresh.bin"
    with open_empty(fresh) as handle:  # absent: created
        handle.write(b"abc")
    assert fresh.read_bytes() == b"abc"
    with open_empty(fresh) as handle:  # with content: nothing of it is left, as with "wb"
        handle.write(b"z")
    assert fresh.read_bytes() == b"z"
    with atomic_path(tmp_path / "atomic.bin") as tmp:  # atomic_path's empty temporary file
        assert tmp.stat().st_size == 0
        with open_empty(tmp) as handle:
            handle.write(b"0123456789")
    assert (tmp_path / "atomic.bin").read_bytes() == b"0123456789"
