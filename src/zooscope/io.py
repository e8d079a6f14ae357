"""Atomic, deterministic file writing shared by every stage.

Every artifact is written to a temporary file in the destination folder and renamed into place,
so an interrupted or failed job never leaves a file that a later run would take for complete.
"""
from __future__ import annotations

import contextlib
import json
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


def write_npy(path: str | os.PathLike, array) -> None:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)


class SafetensorsReader:
    """Reads tensors of a safetensors file one at a time, as numpy arrays, opening it per tensor.

    Why not one ``safe_open`` handle for the whole model: it memory-maps the file, and every page
    read through it stays mapped, counted in the process's RSS, until the handle closes, so
    reading a 2 GiB model tensor by tensor through one handle still peaks at 2 GiB of RSS
    (benchmarks/bench_memory.py). Reopening per tensor (the header is small) releases each
    tensor's pages when it has been copied out. A context manager, like ``safe_open``.
    """

    def __init__(self, path: str | os.PathLike, framework: str = "numpy"):
        self.path, self.framework = str(path), framework

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def get_tensor(self, key: str):
        from safetensors import safe_open

        with safe_open(self.path, framework=self.framework) as handle:
            return handle.get_tensor(key)

    def keys(self) -> list[str]:
        from safetensors import safe_open

        with safe_open(self.path, framework=self.framework) as handle:
            return list(handle.keys())
