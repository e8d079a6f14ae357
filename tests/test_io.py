"""io.SafetensorsReader: tensors read as private maps of the file's bytes."""
import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as save_torch_file

from zooscope.io import SafetensorsReader


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


def test_a_dtype_numpy_lacks_is_not_mapped_and_still_read_through_safetensors(tmp_path):
    weight = torch.randn(4, 3).to(torch.bfloat16)
    save_torch_file({"w": weight}, str(tmp_path / "bf16.safetensors"))
    assert SafetensorsReader(tmp_path / "bf16.safetensors").mapped("w") is None
    assert torch.equal(SafetensorsReader(tmp_path / "bf16.safetensors", framework="pt").get_tensor("w"), weight)


def test_a_truncated_file_is_refused_before_anything_is_mapped(tmp_path, tensors):
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(SafetensorError):
        SafetensorsReader(path).get_tensor("w32")
