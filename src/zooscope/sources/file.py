"""``file:PATH``: a weights file or model folder on disk, typed by tensor name and rank.

Read without ever running code from it: safetensors (typed from its header, copied through numpy,
so its fetch job spends no start-up on torch), or PyTorch files through
``torch.load(..., weights_only=True)`` only; a pickle that needs more is refused. PATH is
relative to the zoo sheet's folder (resolved once, when the sheet is parsed: zooscope.zoo).
As every kind module, it imports at its top only what its declaration needs (the Snakefile
imports the registry, numpy included would cost every job); the rest where it is used.
"""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from zooscope.io import SafetensorsReader, read_json
from zooscope.sources.base import CONVERT_HINT, Fetched, FetchError, SourceKind

if TYPE_CHECKING:
    from torch import Tensor

    from zooscope.zoo import ZooRow

log = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Keys under which training scripts commonly nest the state dict in a checkpoint.
CHECKPOINT_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
# Where a model directory keeps its weights, most preferred first: (format, index, single file).
DIRECTORY_LAYOUTS = (
    ("safetensors", "model.safetensors.index.json", "model.safetensors"),
    ("torch", "pytorch_model.bin.index.json", "pytorch_model.bin"),
)


def fetch(row: ZooRow, threads: int) -> Fetched:
    """Read a weights file or model directory; layers are typed by tensor name and rank."""
    from zooscope.layers import TensorStore, layers_from_state_dict, num_parameters

    model, path = row.model, row.source.path
    state, file_format = load_state_dict(path, model)
    layers = layers_from_state_dict(state)
    if not layers.layers:
        log.warning("model %s: no analysable weight tensors in %s", model, path)
    return Fetched(
        layers=layers,
        num_params=state.num_parameters() if isinstance(state, TensorStore) else num_parameters(state.values()),
        accuracy=row.accuracy,
        accuracy_source="zoo sheet" if row.accuracy is not None else None,
        extra_meta={"file_format": file_format},
    )


def load_state_dict(path: Path, model: str) -> tuple[Mapping[str, Tensor], str]:
    """All tensors of a weights file or model directory, and its format ("safetensors"/"torch").

    safetensors come as a TensorStore that reads one tensor at a time (bounded memory: a model
    is never whole in memory); a pickle cannot be read in part, so torch files are read whole.
    """
    from zooscope.layers import TensorStore

    if not path.exists():
        raise FetchError(f"model {model!r}: weights file not found: {path}")
    file_format, files = checkpoint_files(path, model)
    read = safetensors_tensors if file_format == "safetensors" else read_torch
    contents: dict[str, Any] = {}
    for file in files:
        part = read(file, model)
        clash = sorted(contents.keys() & part.keys())
        if clash:
            raise FetchError(f"model {model!r}: tensor {clash[0]!r} appears in more than one shard ({file})")
        contents.update(part)
    if file_format == "safetensors":
        return TensorStore(contents), file_format
    return contents, file_format


def checkpoint_files(path: Path, model: str) -> tuple[str, list[Path]]:
    """The format and files holding a model's weights: a file, an index, or a model directory.

    In a directory safetensors wins over pytorch_model.bin (no pickle at all), an index over
    a single file; a directory of bare ``*.safetensors`` shards is read in name order.
    """
    if path.is_dir():
        for file_format, index, single in DIRECTORY_LAYOUTS:
            if (path / index).is_file():
                return file_format, shard_files(path / index, model)
            if (path / single).is_file():
                return file_format, [path / single]
        shards = sorted(path.glob("*.safetensors"))
        if shards:
            return "safetensors", shards
        looked_for = ", ".join(name for _, index, single in DIRECTORY_LAYOUTS for name in (index, single))
        raise FetchError(
            f"model {model!r}: no weights in directory {path}; looked for {looked_for}, *.safetensors"
        )
    name = path.name
    if name.endswith(".index.json"):
        return ("safetensors" if ".safetensors" in name else "torch"), shard_files(path, model)
    if path.suffix == ".safetensors":
        return "safetensors", [path]
    if path.suffix in TORCH_SUFFIXES:
        return "torch", [path]
    raise FetchError(
        f"model {model!r}: unsupported weights file {path}; expected .safetensors, "
        f"{', '.join(TORCH_SUFFIXES)}, an *.index.json or a model directory"
    )


def shard_index_names(index: Path, model: str) -> list[str]:
    """The shard names an ``*.index.json`` lists in its weight_map, sorted, each once: the one
    reader of shard indexes (folders here, Hugging Face repos in zooscope.sources.hf)."""
    try:
        weight_map = read_json(index)["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise FetchError(f"model {model!r}: cannot read shard index {index}: {error!r}") from None


def shard_files(index: Path, model: str) -> list[Path]:
    """The shard files an ``*.index.json`` names in its weight_map, each inside its folder."""
    names = shard_index_names(index, model)
    # Containment is checked on the names, not on resolved links: a Hugging Face cache snapshot
    # links every file to ../../blobs, and that is no escape.
    folder = Path(os.path.abspath(index.parent))
    shards = [Path(os.path.normpath(folder / name)) for name in names]
    for shard in shards:
        if not shard.is_relative_to(folder):
            raise FetchError(f"model {model!r}: shard index {index} points outside its folder: {shard}")
        if not shard.is_file():
            raise FetchError(f"model {model!r}: shard {shard} listed in {index} is missing")
    return shards


def safetensors_tensors(path: Path, model: str) -> dict[str, SafetensorsReader]:
    """Every tensor of a safetensors file -> the file's reader, from its header alone; a truncated
    or foreign file is a FetchError (safetensors checks the header against the file's size)."""
    from safetensors import SafetensorError

    reader = SafetensorsReader(path)
    try:
        return dict.fromkeys(reader.header(), reader)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise FetchError(f"model {model!r}: cannot read safetensors file {path}: {error}") from None


def read_torch(path: Path, model: str) -> dict[str, Tensor]:
    """The state dict in a PyTorch file, loaded with ``weights_only=True`` and nothing else.

    A file the weights-only unpickler rejects (a pickled nn.Module, arbitrary objects, a
    malicious pickle) would need its pickled code run to load: it is refused, never retried.
    """
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise FetchError(
            f"model {model!r}: refusing to load {path}: {refusal_reason(error)}; "
            f"zooscope never runs pickled code: {CONVERT_HINT}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as error:
        raise FetchError(
            f"model {model!r}: cannot read PyTorch file {path} (corrupt or truncated?): "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None
    state = unwrap_checkpoint(loaded)
    if not state:
        raise FetchError(f"model {model!r}: no tensors found in {path}; expected a state dict")
    return state


def refusal_reason(error: pickle.UnpicklingError) -> str:
    """A one-line why from the weights-only unpickler's long message."""
    detail = str(error).split("WeightsUnpickler error:")[-1].strip().splitlines()
    first = detail[0].strip() if detail else ""
    if first.startswith("Unsupported global"):
        name = first.split(" was not")[0].removeprefix("Unsupported global:").strip().removeprefix("GLOBAL ")
        return f"loading it would run pickled code (it references {name})"
    return (
        "it is not a tensors-only PyTorch file: loading it would need the full pickle machinery "
        f"(weights-only unpickler: {first or type(error).__name__}), or it is corrupt"
    )


def unwrap_checkpoint(loaded: Any) -> dict[str, Tensor]:
    """The tensors of a state dict, looking inside {"state_dict": ...}/{"model": ...} wrappers.

    Non-tensor entries (epoch counters, hyper-parameters) are dropped.
    """
    from zooscope.layers import is_torch_tensor

    while isinstance(loaded, Mapping):
        inner = next(
            (loaded[key] for key in CHECKPOINT_WRAPPER_KEYS if isinstance(loaded.get(key), Mapping)),
            None,
        )
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping):
        return {}
    return {key: value for key, value in loaded.items() if isinstance(key, str) and is_torch_tensor(value)}


# file: rows ignore option columns: the weights are given, nothing is built or trained.
KIND = SourceKind(
    name="file", syntax="file:PATH", example="file:weights/model.safetensors", argument=r".+",
    fetch=fetch, ignores_options=True, local_path=True,
)
