"""torch.export archives (``.pt2``: ``torch.export.save``, the format ExecuTorch and AOTInductor
packages build on), read for their weights.

The archive is a zip whose ``data/weights/model_weights_config.json`` maps each weight's state-dict
name (``features.0.weight``) to a file of the archive and its metadata (dtype as torch.export's
serialised ScalarType, sizes, strides, storage offset); a weight is that file's raw bytes, or, with
``use_pickle``, a ``torch.save`` blob (read with ``torch.load(weights_only=True)``). The graph
(``models/*.json``) is not read: the names say the module paths, and a layer is typed by name and
rank like any state dict's. Nothing in the archive is run.
"""
from __future__ import annotations

import io
import json
import math
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from zooscope.sources.base import FetchError

if TYPE_CHECKING:
    from torch import Tensor

WEIGHTS_CONFIG = "data/weights/model_weights_config.json"


def archive_root(names: list[str]) -> str | None:
    """The folder of a torch.export archive (``model/``), or None: one with ``archive_format`` and
    the weights' config."""
    for name in names:
        if name.endswith("archive_format"):
            root = name.removesuffix("archive_format")
            if f"{root}{WEIGHTS_CONFIG}" in names:
                return root
    return None


def read_pt2(path: Path, model: str) -> dict[str, Tensor]:
    """The archive's weights under their state-dict names, in the order its config lists them."""
    import torch
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    try:
        with zipfile.ZipFile(path) as archive:
            root = archive_root(archive.namelist())
            if root is None:
                raise FetchError(f"model {model!r}: {path} is not a torch.export archive")
            config = json.loads(archive.read(f"{root}{WEIGHTS_CONFIG}"))["config"]
            tensors = {}
            for name, entry in config.items():
                data = archive.read(f"{root}data/weights/{entry['path_name']}")
                if entry.get("use_pickle"):
                    tensors[name] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                    continue
                meta = entry["tensor_meta"]
                dtype = _SERIALIZE_TO_TORCH_DTYPE[meta["dtype"]]
                sizes = [size["as_int"] for size in meta["sizes"]]
                strides = [stride["as_int"] for stride in meta["strides"]]
                offset = meta["storage_offset"]["as_int"]
                needed = offset + sum((s - 1) * t for s, t in zip(sizes, strides)) + 1 if math.prod(sizes) else 0
                flat = torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)
                if flat.numel() < needed:
                    raise FetchError(f"model {model!r}: weight {name!r} of {path} holds {flat.numel()} values, "
                                     f"fewer than its sizes and strides need ({needed})")
                tensors[name] = torch.as_strided(flat, sizes, strides, offset).clone()
            return tensors
    except FetchError:
        raise
    except pickle.UnpicklingError as error:
        raise FetchError(f"model {model!r}: refusing to load a weight of {path}: {error}") from None
    except Exception as error:  # a damaged zip, JSON or blob: any of their errors
        raise FetchError(f"model {model!r}: cannot read torch.export archive {path} (corrupt, or from another "
                         f"torch?): {type(error).__name__}: {error}") from None
