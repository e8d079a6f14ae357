"""Weights files that are not state dicts: ONNX graphs, GGUF (llama.cpp) files and Keras files.

A ``file:`` source is recognised by its content (:func:`detect`), not its name, and read by the
format's reader (``onnx.read_onnx``, ``gguf.read_gguf``, ``keras.read_keras``), each with the
same interface::

    read_<format>(path: Path, model: str) -> FormatWeights

:class:`FormatWeights` holds

- ``layers``: the analysed weights in depth order, each a :class:`FormatLayer`: its layer name,
  its type in zooscope's vocabulary (``layers.MODULE_TYPES``: Linear, Conv1d, Conv2d, Embedding),
  the stored tensor it comes from, and ``read()``, which reads that one tensor when called and
  returns it as a float32 numpy array in PyTorch's layout (Linear and Embedding (out, in),
  Conv (out, in, *kernel)), whatever the file's own layout and quantisation;
- ``not_analysed``: every other tensor of the file with its shape, stored dtype and why it is not
  analysed (one of :data:`REASONS`), so that nothing is dropped silently;
- ``meta``: facts about the file for meta.json (architecture, producer, versions).

Every stored tensor's dtype (for GGUF its quantisation, e.g. ``Q4_K``) is recorded in meta.json
(:meth:`FormatWeights.to_meta`). Nothing in these files is executed: ONNX is parsed with the
``onnx`` package (no runtime), GGUF with ``gguf``, Keras files with ``h5py`` and ``json`` (no
TensorFlow, no Keras, no Lambda layer's code). docs/formats.md is the user's reference.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

FORMATS = ("onnx", "gguf", "keras")

# Why a stored tensor is not analysed (FormatWeights.not_analysed); the words of the coverage
# table's ``reason`` column, plus the training state that only these formats save with a model.
BIAS = "bias"
NORM = "norm"
ONE_D = "1-D"
INTEGER = "integer buffer"
TIED = "tied"
RANK = "unsupported rank"
NOT_A_LAYER = "not a layer weight"
TRAINING_STATE = "training state"  # an optimizer's moments and counters saved with the model
REASONS = (BIAS, NORM, ONE_D, INTEGER, TIED, RANK, NOT_A_LAYER, TRAINING_STATE)

GGUF_MAGIC = b"GGUF"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
KERAS_WEIGHTS_MEMBER = "model.weights.h5"
# Tags of ModelProto's fields 2 to 8 (producer_name ... opset_import, graph), one of which follows
# its leading ir_version field (tag 0x08) in every serialised ONNX model.
_ONNX_SECOND_TAGS = frozenset({0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42})


@dataclass(frozen=True)
class StoredTensor:
    """A tensor as the file stores it: its name there, shape (the file's layout) and dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class FormatLayer:
    """One analysed weight: layer name, type, its stored tensor and how to read it (float32,
    PyTorch layout)."""

    name: str
    type: str
    stored: StoredTensor
    shape: tuple[int, ...]  # in PyTorch layout, as read() returns it (the layer selection's caps use it)
    read: Callable[[], np.ndarray] = field(repr=False, compare=False)


@dataclass(frozen=True)
class NotAnalysed:
    stored: StoredTensor
    reason: str
    detail: str = ""  # e.g. the layer a tied tensor belongs to, the op that consumes it


@dataclass(frozen=True)
class FormatWeights:
    """What a format reader found in a file (module docstring)."""

    format: str
    layers: tuple[FormatLayer, ...]
    not_analysed: tuple[NotAnalysed, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def num_parameters(self) -> int:
        """Elements of the model's floating-point tensors (quantised ones included; not integer
        buffers, not training state)."""
        stored = {layer.stored.name: layer.stored.size for layer in self.layers}  # stacked experts: once
        return sum(stored.values()) + sum(
            item.stored.size for item in self.not_analysed if item.reason not in (INTEGER, TRAINING_STATE))

    def inventory(self) -> list[dict[str, Any]]:
        """One record per stored tensor, analysed ones first in depth order: ``tensor`` (its name
        in the file), ``shape`` and ``dtype`` as stored, ``layer`` (the layer it became, or ""),
        ``reason`` ("" when analysed) and ``detail``."""
        analysed: dict[str, dict[str, Any]] = {}
        for layer in self.layers:  # a tensor of stacked experts became several layers: all listed
            record = analysed.setdefault(layer.stored.name, {
                "tensor": layer.stored.name, "shape": list(layer.stored.shape), "dtype": layer.stored.dtype,
                "layer": "", "reason": "", "detail": ""})
            record["layer"] = f"{record['layer']},{layer.name}" if record["layer"] else layer.name
        records = list(analysed.values())
        records += [{"tensor": item.stored.name, "shape": list(item.stored.shape), "dtype": item.stored.dtype,
                     "layer": "", "reason": item.reason, "detail": item.detail} for item in self.not_analysed]
        return records

    def to_meta(self) -> dict[str, Any]:
        """What meta.json records of the file: ``file_format``, ``file_format_info`` (the reader's
        facts) and ``stored_tensors``: every tensor with its stored dtype (for GGUF its
        quantisation) and shape, and either the layer it became or why it was not analysed."""
        tensors = {}
        for record in self.inventory():
            entry = {"dtype": record["dtype"], "shape": record["shape"]}
            entry.update({"layer": record["layer"]} if not record["reason"] else
                         {"reason": record["reason"], **({"detail": record["detail"]} if record["detail"] else {})})
            tensors[record["tensor"]] = entry
        return {"file_format": self.format, "file_format_info": self.meta, "stored_tensors": tensors}

def detect(path: Path) -> str | None:
    """The format of a weights file by its first bytes, one of FORMATS, or None (another format:
    safetensors, a PyTorch file, a folder).

    GGUF starts with ``GGUF``; HDF5 (Keras ``.h5``/``.weights.h5``) with its 8-byte signature; a
    ``.keras`` file is a zip holding ``model.weights.h5`` (a PyTorch zip holds ``data.pkl``); an
    ONNX model is a protobuf whose first field is ``ir_version`` (tag 0x08, a small version number),
    followed by another ModelProto field.
    """
    if not path.is_file():
        return None
    with open(path, "rb") as handle:
        head, brace = handle.read(8), handle.read(1)
    if brace == b"{":  # safetensors: an 8-byte header length, then the JSON header
        return None
    if head[:4] == GGUF_MAGIC:
        return "gguf"
    if head == HDF5_SIGNATURE:
        return "keras"
    if head[:4] == ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as archive:
                return "keras" if KERAS_WEIGHTS_MEMBER in archive.namelist() else None
        except zipfile.BadZipFile:
            return None
    if len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] < 0x80 and head[2] in _ONNX_SECOND_TAGS:
        return "onnx"
    return None


def read_format(file_format: str, path: Path, model: str) -> FormatWeights:
    """Read ``path`` with the reader of ``file_format`` (one of FORMATS)."""
    if file_format == "onnx":
        from zooscope.sources.formats.onnx import read_onnx as read
    elif file_format == "gguf":
        from zooscope.sources.formats.gguf import read_gguf as read
    elif file_format == "keras":
        from zooscope.sources.formats.keras import read_keras as read
    else:
        raise ValueError(f"unknown format {file_format!r}; valid: {', '.join(FORMATS)}")
    return read(path, model)


def why_not(stored: StoredTensor, *, floating: bool) -> str:
    """The reason of a tensor that no analysed layer uses, from its dtype and rank alone."""
    if not floating:
        return INTEGER
    if len(stored.shape) <= 1:
        return ONE_D
    return NOT_A_LAYER
