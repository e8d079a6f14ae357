"""Atomic, deterministic file writing shared by every stage.

Every artifact is written to a temporary file in the destination folder and renamed into place,
so an interrupted or failed job never leaves a file that a later run would take for complete.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import numbers
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

# Tables are written with this float format so that the same inputs give byte-identical files.
FLOAT_FORMAT = "%.12g"
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")


def safe_filename(name: Any) -> str:
    """``name`` (made a string) as a file name: every character outside ``[A-Za-z0-9._-]``
    becomes ``_``, and so does a leading ``.`` or ``-`` (a hidden file, or a name that looks like
    an option); an empty name becomes ``_``. The one rule for every name that becomes a file
    name: layers (results/esd/{model}/{layer}.npy), series and metrics (plots).
    """
    cleaned = _UNSAFE_CHARACTERS.sub("_", str(name)) or "_"
    return "_" + cleaned[1:] if cleaned[0] in ".-" else cleaned
# Called before every rename into place (zooscope.jobs sets it): raises when the snakemake process
# that started the job is gone, so a job orphaned by a killed run never completes an output.
before_replace: Callable[[], None] | None = None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    # mkstemp creates the file 0600; give artifacts the usual permissions (shared file systems).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if before_replace is not None:
            before_replace()
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def open_empty(path: str | os.PathLike) -> BinaryIO:
    """``open(path, "wb")`` without truncating a file that is already empty (as
    :func:`atomic_path`'s is) or absent: on ext4 truncating a file to length 0, even an empty one,
    makes its ``close`` write back every page written since (``auto_da_alloc``), which took 0.25 s
    of VGG16's fetch (553 MB, on the critical path of every run; 2026-12-01). A file with content
    is truncated as ``"wb"`` does."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
    if os.fstat(fd).st_size:
        os.ftruncate(fd, 0)
    return open(fd, "wb")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_tsv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as a TSV with a fixed float format and no index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format=FLOAT_FORMAT, lineterminator="\n")


def write_rows_tsv(path: str | os.PathLike, columns, rows) -> None:
    """Write rows (mappings of column -> value) as a TSV in the format of :func:`write_tsv`.

    The same bytes as pandas writes for the same table (``tests/test_io.py`` checks it), without
    pandas: a job that writes one table skips pandas' import (a third of a second per job).
    None and NaN are empty; floats use FLOAT_FORMAT; quoting is the csv module's, as pandas'.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(columns)
            writer.writerows([_tsv_cell(row[column]) for column in columns] for row in rows)


def _tsv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return "" if math.isnan(value) else FLOAT_FORMAT % value
    return str(value)


def write_npy(path: str | os.PathLike, array) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        with open_empty(tmp) as handle:
            np.save(handle, array, allow_pickle=False)


@dataclass(frozen=True)
class SafetensorsDtype:
    """A dtype of the safetensors format: its numpy dtype (little-endian, as the format stores
    it; BF16 and F8, which numpy lacks, as ml_dtypes' types, so that a bf16 tensor is mapped and
    widened like any other, without torch), the name of its torch dtype, and whether it is
    floating point (only such tensors can be layers)."""

    numpy: str
    torch: str
    floating: bool


# The one table of the format's dtypes (zooscope.tensors types tensors and converts from it).
# A numpy name without a byte order ("bfloat16") is ml_dtypes' (numpy_dtype).
SAFETENSORS_DTYPES: dict[str, SafetensorsDtype] = {
    "F64": SafetensorsDtype("<f8", "float64", True), "F32": SafetensorsDtype("<f4", "float32", True),
    "F16": SafetensorsDtype("<f2", "float16", True), "BF16": SafetensorsDtype("bfloat16", "bfloat16", True),
    "F8_E4M3": SafetensorsDtype("float8_e4m3fn", "float8_e4m3fn", True),
    "F8_E5M2": SafetensorsDtype("float8_e5m2", "float8_e5m2", True),
    "I64": SafetensorsDtype("<i8", "int64", False), "I32": SafetensorsDtype("<i4", "int32", False),
    "I16": SafetensorsDtype("<i2", "int16", False), "I8": SafetensorsDtype("i1", "int8", False),
    "U8": SafetensorsDtype("u1", "uint8", False), "BOOL": SafetensorsDtype("?", "bool", False),
}
FLOAT_DTYPES = tuple(name for name, dtype in SAFETENSORS_DTYPES.items() if dtype.floating)


@functools.cache
def numpy_dtypes() -> dict:
    """safetensors dtype name -> numpy dtype, ml_dtypes' for BF16 and F8 (imports numpy)."""
    import ml_dtypes
    import numpy as np

    return {name: np.dtype(getattr(ml_dtypes, dtype.numpy, dtype.numpy)) for name, dtype in SAFETENSORS_DTYPES.items()}


def safetensors_dtype(dtype) -> str:
    """The safetensors name of a numpy dtype (ValueError for one safetensors cannot store)."""
    for name, candidate in numpy_dtypes().items():
        if candidate == dtype:
            return name
    raise ValueError(f"dtype {dtype} cannot be stored in a safetensors file")


class SafetensorsReader:
    """Reads tensors of a safetensors file one at a time, as numpy arrays.

    Each tensor is an array over a private (copy-on-write) memory map of just its bytes (numpy
    framework; BF16 and F8 as ml_dtypes' types): reading copies nothing and allocates no fresh memory, its
    pages come from the page cache and are unmapped when the array is released, and a write to
    it changes the process's copy, never the file. Why not one ``safe_open``
    handle for the whole model: every page read through it stays mapped, counted in the
    process's RSS, until the handle closes, so reading a 2 GiB model tensor by tensor through
    one handle peaks at 2 GiB of RSS (benchmarks/bench_memory.py). The header is checked by
    ``safe_open`` (offsets against the file's size) before any tensor is mapped.
    ``framework="pt"`` opens the file per tensor and copies the tensor out.
    """

    def __init__(self, path: str | os.PathLike, framework: str = "numpy"):
        self.path, self.framework = str(path), framework
        self._header: dict[str, Any] | None = None

    def get_tensor(self, key: str):
        mapped = self.mapped(key) if self.framework == "numpy" else None
        if mapped is not None:
            return mapped
        from safetensors import safe_open

        with safe_open(self.path, framework=self.framework) as handle:
            return handle.get_tensor(key)

    def header(self) -> dict[str, Any]:
        """The tensors' entries (dtype, shape, data_offsets from the data's start, "data_start")."""
        if self._header is None:
            from safetensors import safe_open

            with safe_open(self.path, framework="numpy"):  # validates the header and the offsets
                pass
            with open(self.path, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(size))
            header.pop("__metadata__", None)
            self._header = {key: {**entry, "data_start": 8 + size} for key, entry in header.items()}
        return self._header

    def mapped(self, key: str):
        """The tensor as a numpy array over a private memory map of its bytes (BF16 and F8 as
        ml_dtypes' types); None for a key that is not in the file."""
        import mmap

        import numpy as np

        entry = self.header().get(key)
        if entry is None or entry["dtype"] not in numpy_dtypes():
            return None
        dtype = numpy_dtypes()[entry["dtype"]]
        begin, end = (entry["data_start"] + offset for offset in entry["data_offsets"])
        if end == begin:
            return np.empty(entry["shape"], dtype)
        aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
        with open(self.path, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), end - aligned, access=mmap.ACCESS_COPY, offset=aligned)
        return np.frombuffer(mapped, dtype, (end - begin) // dtype.itemsize, begin - aligned).reshape(entry["shape"])
