"""The ``fetch`` stage: turn one zoo-sheet row into the workflow's common model form.

Whatever a model's source kind (zooscope.sources.registry), ``fetch_model`` writes the same four
files into ``resources/models/{model}/``: ``model.safetensors`` (the analysed weights in their
stored dtype, then, for a rebuildable kind, the rest of the module's state), ``layers.json``,
``meta.json`` and ``tensors.json`` (every tensor of the checkpoint and what became of it:
zooscope.sources.coverage), so the later stages need no model library. This is the only stage
that imports one (torch), and only where a kind needs it: a safetensors or .npz ``file:`` source
without a config.json is typed from its headers and copied through numpy, so its fetch job spends
no start-up on torch.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from zooscope.io import atomic_path, open_empty, write_json
from zooscope.layers import LayerList
from zooscope.tensors import stored_bytes, tensor_info
from zooscope.sources import coverage
from zooscope.sources.base import Fetched, FetchError
from zooscope.sources.selection import Selection
from zooscope.zoo import ZooRow, parse_row

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)

OUTPUT_FILES = ("model.safetensors", "layers.json", "meta.json", "tensors.json")
# Bytes per element of each safetensors dtype.
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
               "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def fetch_model(
    row: ZooRow | Mapping[str, Any], out_dir: str | os.PathLike, *, sheet_dir: str | os.PathLike = ".",
    threads: int = 1, select: Selection | Mapping[str, Any] | None = None,
    base_dir: str | os.PathLike | None = None,
) -> None:
    """Fetch one zoo-sheet row into ``out_dir``: model.safetensors, layers.json, meta.json, tensors.json.

    ``row`` is a ZooRow, or a sheet row as read (``model``, ``series``, ``source``, ``accuracy``
    and option columns), parsed here with relative paths resolved against ``sheet_dir``.
    ``select``: config ``select``, the defaults of the row's layer selection (its own cells win:
    zooscope.sources.selection). Every file is written atomically and deterministically (no
    timings: reruns give identical bytes). A model left with no analysable weight is a FetchError
    that shows what its tensors were (coverage.summary), and nothing is written.
    An adapter (a ``peft:`` row: zooscope.sources.peft) is merged onto its base, fetched into
    ``base_dir``.
    """
    if not isinstance(row, ZooRow):
        row = parse_row(row, sheet_dir)
    if select:
        row = row.with_selection_defaults(select)
    start = time.perf_counter()
    if row.adapter:
        if base_dir is None or row.base is None:
            raise FetchError(f"model {row.model!r}: an adapter (peft: source) needs its base model in the column 'base'")
        fetched = row.source.spec.fetch(row, threads, Path(base_dir))
    else:
        fetched = row.source.spec.fetch(row, threads)
    if not fetched.layers.layers:
        where = row.source.text + (f" ({row.source.path})" if row.source.path else "")
        raise FetchError(
            f"model {row.model!r}: no analysable weight in {where}: {coverage.summary(fetched.inventory)}; "
            "docs/intake.md says which tensors are analysed"
            + ("" if row.selection == Selection() else "; loosen the layer selection (config select, zoo columns)")
        )
    meta = model_meta(row, fetched)
    if row.selection != Selection():
        meta["selection"] = row.selection.to_meta()
    write_model(out_dir, meta, fetched.layers, fetched.other_tensors, fetched.inventory)
    log.info(
        "fetched %s (%s) in %.1f s: %d layers, %d parameters, accuracy %s",
        row.model, row.source.text, time.perf_counter() - start, len(fetched.layers.layers),
        fetched.num_params, fetched.accuracy,
    )


def model_meta(row: ZooRow, fetched: Fetched) -> dict[str, Any]:
    """meta.json's content except the weights' sha256, which is known once they are serialised."""
    return {
        "model": row.model,
        "series": row.series,
        "source": row.source.text,
        "accuracy": fetched.accuracy,
        "accuracy_source": fetched.accuracy_source,
        "num_params": fetched.num_params,
        "options": dict(row.options),
        **fetched.extra_meta,
    }


def write_model(
    out_dir: str | os.PathLike, meta: dict[str, Any], layers: LayerList,
    other_tensors: Mapping[str, Tensor] | None = None, inventory: list[dict[str, Any]] | None = None,
) -> None:
    """Write the fetch outputs atomically; meta.json last, with the weights file's digest."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "model.safetensors") as tmp:
        digest = write_safetensors(tmp, layers, other_tensors or {})
    write_json(
        out_dir / "layers.json",
        {"model": meta["model"], "layers": [layer.to_json() for layer in layers.layers]},
    )
    write_json(out_dir / "tensors.json", {"model": meta["model"], "tensors": inventory or []})
    write_json(out_dir / "meta.json", {**meta, "weights_digest": digest})


def write_safetensors(path: Path, layers: LayerList, other_tensors: Mapping[str, Tensor] | None = None) -> str:
    """Write the layers' weights as a safetensors file, one tensor at a time; its
    :func:`weights_digest`.

    Every tensor keeps its stored dtype: a bf16 checkpoint's model cache is bf16, no wider copy of
    a large model (the esd stage widens block by block). ``other_tensors`` (a module's or a
    checkpoint's biases, norms and buffers) follow in name order. Streaming (header, then each
    tensor's bytes in depth order) instead of serialising the whole file in memory keeps fetch's
    memory at the model plus one tensor, whatever the model's size. The header is computed from
    the tensor list, so the bytes are deterministic. A float32 layer's sha256 is already known
    (its ``Layer.sha256`` hashes the same bytes), so only the other tensors are hashed here.
    """
    # (name, safetensors dtype, shape, bytes, its bytes when asked, their sha256 where known):
    # weights first, in depth order
    entries = [(layer.tensor, layers.dtypes[layer.tensor], list(layer.shape),
                DTYPE_SIZES[layers.dtypes[layer.tensor]] * math.prod(layer.shape),
                lambda key=layer.tensor: stored_bytes(layers.tensors[key]),
                bytes.fromhex(layer.sha256) if layers.dtypes[layer.tensor] == "F32" else None)
               for layer in layers.layers]
    for name in sorted(other_tensors or {}):  # read one at a time, when written
        info = tensor_info(other_tensors, name)
        entries.append((name, info.dtype, list(info.shape), DTYPE_SIZES[info.dtype] * math.prod(info.shape),
                        lambda name=name: stored_bytes(other_tensors[name]), None))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, size, *_ in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    digest = hashlib.sha256()
    with open_empty(path) as handle:
        for chunk in (len(encoded).to_bytes(8, "little"), encoded):
            handle.write(chunk)
            digest.update(chunk)
        for *_, make, known in entries:
            data = make()
            handle.write(data)
            digest.update(known or hashlib.sha256(data).digest())
            del data
    return digest.hexdigest()


def weights_digest(path: str | os.PathLike) -> str:
    """meta.json's ``weights_digest`` of a safetensors file, from the file: the sha256 of its
    header (the 8-byte length and the JSON, as stored) followed by the sha256 digest (32 bytes) of
    each tensor's bytes, in the file's order. A hash list: as strong an identity of the file as its
    own sha256, and the fetch job gets it without a second pass over the weights, whose layers'
    sha256 (layers.json) it has computed already (a second sha256 pass over VGG16's 553 MB cost
    0.29 s of every fetch, on the critical path of every run)."""
    import mmap

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + length])
        ranges = sorted(entry["data_offsets"] for name, entry in header.items() if name != "__metadata__")
        digest = hashlib.sha256(data[:8 + length])
        start = 8 + length
        for begin, end in ranges:
            digest.update(hashlib.sha256(memoryview(data)[start + begin:start + end]).digest())
        return digest.hexdigest()

