"""Atomic, deterministic file writing shared by every stage.

Every artifact is written to a temporary file in the destination folder and renamed into place,
so an interrupted or failed job never leaves a file that a later run would take for complete.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

# Tables are written with this float format so that the same inputs give byte-identical files.
FLOAT_FORMAT = "%.12g"


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
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)


# safetensors dtype -> numpy dtype (little-endian, as the format stores them); others (BF16, F8)
# have no numpy type and are read through safetensors itself.
NUMPY_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U8": "u1", "BOOL": "?",
}


class SafetensorsReader:
    """Reads tensors of a safetensors file one at a time, as numpy arrays.

    Each tensor is an array over a private (copy-on-write) memory map of just its bytes (numpy
    framework, a dtype numpy has): reading copies nothing and allocates no fresh memory, its
    pages come from the page cache and are unmapped when the array is released, and a write to
    it changes the process's copy, never the file. Why not one ``safe_open``
    handle for the whole model: every page read through it stays mapped, counted in the
    process's RSS, until the handle closes, so reading a 2 GiB model tensor by tensor through
    one handle peaks at 2 GiB of RSS (benchmarks/bench_memory.py). The header is checked by
    ``safe_open`` (offsets against the file's size) before any tensor is mapped. Other dtypes
    and ``framework="pt"`` open the file per tensor and copy the tensor out.
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
        """The tensor as a numpy array over a private memory map of its bytes; None for a dtype
        that numpy does not have (BF16, F8) or a key that is not in the file."""
        import mmap

        import numpy as np

        entry = self.header().get(key)
        if entry is None or entry["dtype"] not in NUMPY_SAFETENSORS_DTYPES:
            return None
        dtype = np.dtype(NUMPY_SAFETENSORS_DTYPES[entry["dtype"]])
        begin, end = (entry["data_start"] + offset for offset in entry["data_offsets"])
        if end == begin:
            return np.empty(entry["shape"], dtype)
        aligned = begin - begin % mmap.ALLOCATIONGRANULARITY
        with open(self.path, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), end - aligned, access=mmap.ACCESS_COPY, offset=aligned)
        return np.frombuffer(mapped, dtype, (end - begin) // dtype.itemsize, begin - aligned).reshape(entry["shape"])
