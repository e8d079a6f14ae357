"""Keras files: ``.keras`` (a zip of config.json and model.weights.h5), ``.weights.h5`` (Keras 3)
and the legacy HDF5 ``.h5`` (Keras 2 / tf.keras ``model.save`` and ``save_weights``, Keras 3's
legacy save), read with ``h5py`` and ``json`` only: no TensorFlow, no Keras, no layer code.

Dense kernels are stored (in, out) and become Linear (out, in); Conv1D (k, in, out) and Conv2D
(kh, kw, in, out) kernels become Conv1d (out, in, k) and Conv2d (out, in, kh, kw); Embedding
tables (num, dim) are kept. Layer names are the file's layer names (a nested model's layers are
``outer.inner``).

- Keras 3 files keep each layer's variables as ``layers/<path>/vars/0, 1, ...``, with the layer's
  name in the ``vars`` group's ``name`` attribute and the class only in config.json (``.keras``);
  without one (a bare ``.weights.h5``) the class is read off the group's name, which Keras 3
  derives from it (``dense_2`` -> Dense, ``conv2d`` -> Conv2D). Variable 0 is the kernel (the
  embedding table). Depth is the order Keras wrote the layers in (``model.layers`` order), read
  from the file offsets of their data, since HDF5 lists groups alphabetically.
- Legacy files list the layers in order (``layer_names``) and each layer's variables by name
  (``weight_names``: ``dense/kernel:0``); the class comes from ``model_config`` when the file has
  it, else from the variable: ``kernel`` of rank 2, 3, 4 is Dense, Conv1D, Conv2D.

Other layers' variables (normalisation, recurrent, depthwise, attention's einsum kernels) and
the optimizer's state are recorded as not analysed.
"""
from __future__ import annotations

import io
import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zooscope.tensors import as_float32
from zooscope.sources.formats import (
    BIAS, KERAS_WEIGHTS_MEMBER, NORM, NOT_A_LAYER, RANK, TRAINING_STATE, FormatLayer, FormatWeights, NotAnalysed,
    StoredTensor, why_not,
)

# Keras class -> (layer type, the kernel's axes in PyTorch's layout, the kernel's rank).
CLASSES: dict[str, tuple[str, tuple[int, ...], int]] = {
    "Dense": ("Linear", (1, 0), 2),
    "Conv1D": ("Conv1d", (2, 1, 0), 3),
    "Conv2D": ("Conv2d", (3, 2, 0, 1), 4),
    "Embedding": ("Embedding", (0, 1), 2),
}
KERNELS = {"kernel", "embeddings"}
BIASES = {"bias"}
NORM_CLASSES = {"BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization",
                "RMSNormalization"}
NORM_VARIABLES = {"gamma", "beta", "moving_mean", "moving_variance"}
_SUFFIX = re.compile(r"_\d+$")


@dataclass(frozen=True)
class _Variable:
    stored: StoredTensor
    role: str | None  # "kernel", "bias", ... when the file names it (legacy), else None
    index: int  # its position among its layer's variables
    dataset: Any


def read_keras(path: Path, model: str) -> FormatWeights:
    """The weights of a Keras file (module docstring)."""
    import h5py

    from zooscope.sources.base import FetchError

    config: dict = {}
    facts: dict = {}
    try:
        if zipfile.is_zipfile(path):
            handle, config, facts = _open_keras_zip(path)
        else:
            handle = open(path, "rb")
        h5 = h5py.File(handle, "r")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise FetchError(f"model {model!r}: cannot read Keras file {path}: {error}") from None
    legacy = h5["model_weights"] if "model_weights" in h5 else h5
    if "layer_names" in legacy.attrs:
        if "model_config" in h5.attrs:
            config = _json(h5.attrs["model_config"])
        found, version = _legacy_layers(legacy), "2 (legacy HDF5)"
        others = _datasets(h5["optimizer_weights"], "optimizer state") if "optimizer_weights" in h5 else []
    elif "layers" in h5 or "vars" in h5:
        found, others, version = _keras3_layers(h5)
    else:
        raise FetchError(f"model {model!r}: {path} is an HDF5 file but not a Keras weights file (no "
                         "layer_names, no layers/ group); save it with model.save('m.keras') or model.save_weights")
    classes = _classes(config)
    layers, skipped = [], [NotAnalysed(v.stored, TRAINING_STATE if detail != "model variable" else NOT_A_LAYER, detail)
                           for v, detail in others]
    for name, class_name, variables in found:
        class_name = classes.get(name.rsplit(".", 1)[-1], class_name)
        kernel = _kernel(class_name, variables)
        for variable in variables:
            if variable is kernel:
                kind, axes, _ = CLASSES[class_name]
                shape = tuple(variable.stored.shape[axis] for axis in axes)
                layers.append(FormatLayer(name, kind, variable.stored, shape,
                                          lambda d=variable.dataset, a=axes: as_float32(np.transpose(d[()], a))))
            else:
                skipped.append(NotAnalysed(variable.stored, _reason(class_name, variable, kernel), name))
    meta = {"keras_format": version,
            "keras_version": _text(h5.attrs.get("keras_version")) or facts.get("keras_version"),
            "backend": _text(h5.attrs.get("backend"))}
    return FormatWeights("keras", tuple(layers), tuple(skipped), {k: v for k, v in meta.items() if v})


def _kernel(class_name: str | None, variables: list[_Variable]) -> _Variable | None:
    """The variable analysed of a layer: its kernel when the class is Dense/Conv/Embedding and the
    kernel is a float of the class's rank, else None."""
    if class_name not in CLASSES:
        return None
    named = [v for v in variables if v.role in KERNELS]
    candidate = named[0] if named else next((v for v in variables if v.role is None and v.index == 0), None)
    if candidate is None or candidate.dataset.dtype.kind != "f" or len(candidate.stored.shape) != CLASSES[class_name][2]:
        return None
    return candidate


def _reason(class_name: str | None, variable: _Variable, kernel: _Variable | None) -> str:
    floating = variable.dataset.dtype.kind == "f"
    if not floating:
        return why_not(variable.stored, floating=False)
    if class_name in NORM_CLASSES or variable.role in NORM_VARIABLES:
        return NORM
    if variable.role in BIASES or (class_name in CLASSES and variable.role is None and variable.index == 1
                                   and len(variable.stored.shape) == 1):
        return BIAS
    if class_name in CLASSES and kernel is None and variable.index == 0 and len(variable.stored.shape) > 1:
        return RANK
    return why_not(variable.stored, floating=True)


def _keras3_layers(h5):
    """(layers as (name, class guessed from the group name, variables) in write order, other
    variables with where they are, format version)."""
    import h5py

    layers: list[tuple[str, str | None, list[_Variable]]] = []
    others: list[tuple[_Variable, str]] = []

    def variables_of(group) -> list[_Variable]:
        keys = sorted((key for key in group if isinstance(group[key], h5py.Dataset)), key=_index_key)
        return [_Variable(StoredTensor(group[key].name.lstrip("/"), tuple(group[key].shape), str(group[key].dtype)),
                          None if key.isdigit() else key, position, group[key])
                for position, key in enumerate(keys)]

    def walk(group, names: list[str]) -> None:
        for key in group:
            child = group[key]
            if not isinstance(child, h5py.Group):
                continue
            if key == "vars":
                continue
            if "vars" in child:
                own = names + [_text(child["vars"].attrs.get("name")) or key]
                variables = variables_of(child["vars"])
                if variables:
                    layers.append((".".join(own), _class_from_group(key), variables))
                walk(child, own)
            else:  # "layers", a list or dict attribute of a layer
                walk(child, names)

    for key in h5:
        if key == "layers":
            walk(h5["layers"], [])
        elif key == "vars":  # the model's own variables: none for Sequential and Functional
            others += [(v, "model variable") for v in variables_of(h5["vars"])]
        elif isinstance(h5[key], h5py.Group):  # optimizer, metrics: training state
            others += _datasets(h5[key], f"{key} state")
    layers.sort(key=lambda layer: _write_position(layer[2]))
    return layers, others, "3"


def _datasets(group, detail: str) -> list[tuple[_Variable, str]]:
    """Every dataset under ``group`` (an optimizer's state), each with ``detail``."""
    import h5py

    found: list[tuple[_Variable, str]] = []
    group.visititems(lambda _, item: found.append(
        (_Variable(StoredTensor(item.name.lstrip("/"), tuple(item.shape), str(item.dtype)), None, 0, item), detail))
        if isinstance(item, h5py.Dataset) else None)
    return found


def _legacy_layers(group) -> list[tuple[str, str | None, list[_Variable]]]:
    """The layers of a legacy HDF5 file in their saved order: (name, class or None, variables)."""
    layers = []
    for layer in map(_text, group.attrs["layer_names"]):
        weight_names = [_text(name) for name in group[layer].attrs.get("weight_names", [])]
        by_owner: dict[str, list[_Variable]] = {}
        for position, weight in enumerate(weight_names):
            dataset = group[layer][weight]
            owner, _, variable = weight.rpartition("/")
            inner = owner.rsplit("/", 1)[-1] if owner else layer
            name = layer if inner == layer else f"{layer}.{inner}"
            role = variable.split(":")[0]
            by_owner.setdefault(name, []).append(_Variable(
                StoredTensor(dataset.name.lstrip("/"), tuple(dataset.shape), str(dataset.dtype)), role, position, dataset))
        for name, variables in by_owner.items():
            layers.append((name, _class_from_variables(variables), variables))
    return layers


def _class_from_group(key: str) -> str | None:
    """Keras 3 names a layer's group after its class in snake case, numbered: conv2d_3 -> Conv2D."""
    base = _SUFFIX.sub("", key).replace("_", "")
    return next((name for name in (*CLASSES, *NORM_CLASSES) if name.lower() == base), None)


def _class_from_variables(variables: list[_Variable]) -> str | None:
    """A legacy layer's class from its variables, where the file has no model config."""
    for variable in variables:
        if variable.role == "embeddings":
            return "Embedding"
        if variable.role == "kernel":
            return {2: "Dense", 3: "Conv1D", 4: "Conv2D"}.get(len(variable.stored.shape))
    return None


def _classes(config: Any) -> dict[str, str]:
    """Layer name -> class name of every layer in a Keras model config, nested models' included."""
    found: dict[str, str] = {}

    def walk(item) -> None:
        if isinstance(item, dict):
            inner = item.get("config")
            if isinstance(item.get("class_name"), str) and isinstance(inner, dict) and isinstance(inner.get("name"), str):
                found.setdefault(inner["name"], item["class_name"])
            for value in item.values():
                walk(value)
        elif isinstance(item, list):
            for value in item:
                walk(value)

    walk(config)
    return found


def _write_position(variables: list[_Variable]) -> tuple:
    """Where a layer's data starts in the file: Keras writes layers in model order, so this is it."""
    offsets = [v.dataset.id.get_offset() for v in variables]
    known = [offset for offset in offsets if offset is not None]
    return (0, min(known)) if known else (1, 0)


def _index_key(key: str):
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def _open_keras_zip(path: Path):
    """(a file object over the archive's model.weights.h5, config.json, metadata.json), parsed."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(KERAS_WEIGHTS_MEMBER)
        names = archive.namelist()
        config = _json(archive.read("config.json")) if "config.json" in names else {}
        facts = _json(archive.read("metadata.json")) if "metadata.json" in names else {}
        if info.compress_type != zipfile.ZIP_STORED:  # Keras stores it uncompressed; else unpack once
            import tempfile

            spooled = tempfile.TemporaryFile()
            with archive.open(info) as member:
                while chunk := member.read(1 << 24):
                    spooled.write(chunk)
            spooled.seek(0)
            return spooled, config, facts
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        header = raw.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return _Window(path, info.header_offset + 30 + name_length + extra_length, info.file_size), config, facts


class _Window(io.RawIOBase):
    """A read-only file object over bytes [start, start + size) of a file: an uncompressed zip
    member read in place, tensor by tensor, without unpacking the archive."""

    def __init__(self, path: Path, start: int, size: int):
        super().__init__()
        self._file = open(path, "rb")
        self._start, self._size, self._position = start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self._size - self._position))
        self._file.seek(self._start + self._position)
        read = self._file.readinto(memoryview(buffer)[:count])
        self._position += read
        return read

    def close(self) -> None:
        self._file.close()
        super().close()


def _json(value) -> Any:
    try:
        return json.loads(_text(value))
    except (ValueError, TypeError):
        return {}


def _text(value) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, (bytes, np.bytes_)) else str(value)
