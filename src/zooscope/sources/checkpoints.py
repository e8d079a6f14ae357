"""Weights files of a ``file:`` source, recognised by their content, never by their name.

A path is a model folder, a shard index (``*.index.json``) or one file, and a file is whatever its
first bytes say (docs/intake.md, "Formats"): safetensors (an 8-byte header length, then a JSON
header), a PyTorch file (a zip holding ``data.pkl``: ``torch.save``'s format under any name, ``.th``,
``.pth.tar``, ``.ckpt`` or none; or the legacy pickle and tar formats), or a NumPy ``.npz`` (a zip
of ``.npy`` members). PyTorch files are read with ``torch.load(weights_only=True)`` only: a pickle
that needs more would run code, and is refused.

The tensors of a PyTorch file are looked for by one rule (:func:`candidates`, documented in
docs/intake.md, "Wrappers"): the mapping itself when it holds tensors, and every mapping under a
wrapper key (WRAPPER_KEYS), recursively. One candidate is taken; several are an error listing
them, unless the zoo column ``checkpoint_key`` names one. Then the prefixes that wrap a whole
state dict (``module.`` of DataParallel/DDP, ``_orig_mod.`` of torch.compile, and ``model.`` of a
Lightning checkpoint) are removed from every name (:func:`strip_prefixes`), and meta.json records
which (:meth:`Checkpoint.to_meta`).
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from zooscope.io import FLOAT_DTYPES, SafetensorsReader, read_json, safetensors_dtype
from zooscope.tensors import (
    LazyTensors, RenamedTensors, TensorInfo, TensorStore, is_torch_tensor, num_parameters, tensor_info,
    dequantised,
)
from zooscope.sources import dcp, inert, pt2, torchscript
from zooscope.sources.base import CONVERT_HINT, FetchError

if TYPE_CHECKING:
    from torch import Tensor

log = logging.getLogger(__name__)

# Keys under which training scripts nest the model's tensors, in the order candidates are listed:
# torch examples and most scripts (state_dict, model_state_dict, model), DataParallel-era scripts
# (module, net), EMA copies (timm, YOLO-style and others' ema/model_ema/state_dict_ema).
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "ema", "model_ema",
                "state_dict_ema", "ema_state_dict")
# How deep wrappers are looked into ({"model": {"state_dict": ...}} is two).
WRAPPER_DEPTH = 3
# The top-level mapping, as a candidate's name and as the value of checkpoint_key that selects it.
TOP_LEVEL = "/"
# Prefixes that wrap every key of a state dict, removed as long as every key has one of them.
ALWAYS_STRIPPED = ("module.", "_orig_mod.")
# Lightning's LightningModule holds the network as an attribute, often ``model``: its state dict
# keys start with "model." (removed only in a Lightning checkpoint, recognised by this key).
LIGHTNING_PREFIX = "model."
LIGHTNING_MARKERS = ("pytorch-lightning_version", "lightning_version")
# Where a model directory keeps its weights, most preferred first: (format, index, single file).
DIRECTORY_LAYOUTS = (
    ("safetensors", "model.safetensors.index.json", "model.safetensors"),
    ("torch", "pytorch_model.bin.index.json", "pytorch_model.bin"),
)


@dataclass(frozen=True)
class Checkpoint:
    """The tensors of a weights file or folder under their final names, and how they were found.

    ``tensors`` reads safetensors and .npz members one at a time (a store with ``describe``); a
    pickle cannot be read in part, so a PyTorch file's tensors are in memory.
    """

    tensors: Mapping[str, Any]
    format: str
    files: tuple[Path, ...]
    key: str | None = None  # the wrapper the tensors were found in (TOP_LEVEL: none); None: no pickle
    prefixes: tuple[str, ...] = ()  # removed from every name, in the order removed

    def describe(self, key: str) -> TensorInfo:
        return tensor_info(self.tensors, key)

    def num_parameters(self) -> int:
        """Elements of the floating-point tensors (tied ones of a PyTorch file once)."""
        if not hasattr(self.tensors, "describe"):
            return num_parameters(self.tensors.values())
        return sum(math.prod(info.shape) for info in map(self.describe, self.tensors) if info.dtype in FLOAT_DTYPES)

    def to_meta(self) -> dict[str, Any]:
        """meta.json's ``checkpoint``: format, files, wrapper key and removed prefixes."""
        return {"format": self.format, "files": [file.name for file in self.files], "key": self.key,
                "prefixes_removed": list(self.prefixes)}


def read_checkpoint(path: Path, model: str, key: str | None = None) -> Checkpoint:
    """The tensors of a weights file or model folder (module docstring); ``key``: the zoo column
    ``checkpoint_key``, which wrapper to take when a PyTorch file has several."""
    if not path.exists():
        raise FetchError(f"model {model!r}: weights file not found: {path}")
    file_format, files = checkpoint_files(path, model)
    if file_format == "npz":
        tensors, found_key, lightning = NpzStore(files[0], model), None, False
    elif file_format == "safetensors":
        readers: dict[str, SafetensorsReader] = {}
        for file in files:
            part = safetensors_tensors(file, model)
            _no_clash(model, readers, part, file)
            readers.update(part)
        try:  # scaled FP8 and MXFP4 weights read dequantised
            tensors, found_key, lightning = dequantised(TensorStore(readers)), None, False
        except ValueError as error:
            raise FetchError(f"model {model!r}: {error} in {path}") from None
    elif file_format == "dcp":  # the candidates from the metadata alone; only the one taken is read
        entries, lightning = dcp.read_metadata(path, model), False
        nested, by_placeholder = dcp.nested_placeholders(entries)
        found_key, part = choose(candidates(nested), model, path, key)
        tensors = dcp.DcpStore(path, {name: by_placeholder[id(value)] for name, value in part.items()}, model)
    elif file_format == "torchscript":  # its modules' tensors, a state dict (no wrappers)
        tensors, found_key, lightning = torchscript.read_torchscript(path, model), None, False
    elif file_format == "pt2":
        tensors, found_key, lightning = pt2.read_pt2(path, model), None, False
    else:
        tensors, found_key, lightning = {}, None, False
        for file in files:
            loaded = load_torch(file, model)
            found_key, part = choose(candidates(loaded), model, file, key)
            lightning = isinstance(loaded, Mapping) and any(marker in loaded for marker in LIGHTNING_MARKERS)
            _no_clash(model, tensors, part, file)
            tensors.update(part)
    if key is not None and file_format not in ("torch", "dcp"):
        raise FetchError(f"model {model!r}: checkpoint_key {key!r} is set but {path} is a {file_format} "
                              "file, which has no wrappers; leave the column empty")
    if not tensors:
        raise FetchError(f"model {model!r}: no tensors found in {path}; expected a state dict")
    refuse_packed_integers(tensors, path, model)
    prefixes = strip_prefixes(tensors, lightning)
    if prefixes:
        tensors = renamed(tensors, prefixes)
    return Checkpoint(tensors, file_format, tuple(files), found_key, prefixes)


# Tensors that mark weights quantised to packed integers, by the library that wrote them: the
# layer's matrix is not in the file as numbers zooscope can read, only its codes.
PACKED_INTEGER_MARKERS = (
    (".qweight", "GPTQ or AWQ (qweight, qzeros, scales)"),
    (".weight_packed", "compressed-tensors' pack-quantized integers (weight_packed)"),
    (".weight.absmax", "bitsandbytes 4-bit (weight.absmax, weight.quant_map)"),
    (".SCB", "bitsandbytes 8-bit (weight, SCB)"),
)


MLX_PACKED = "MLX's packed integers (weight, scales, biases)"
# Any other weight matrix stored as integers with a scale beside it (``{weight}_scale``) is a
# quantisation too: NVIDIA ModelOpt's NVFP4 (a uint8 weight, weight_scale, weight_scale_2), int8
# exports. (An integer "weight" without one stays an integer buffer.)
INTEGER_WEIGHTS = "integers (a weight matrix of an integer dtype with a scale: NVFP4, int8 or another packed format)"


def refuse_packed_integers(tensors: Mapping[str, Any], path: Path, model: str) -> None:
    """A FetchError when the checkpoint's weights are quantised to packed integers
    (PACKED_INTEGER_MARKERS; MLX: an integer ``...weight`` with ``...scales``; any other integer
    weight matrix with a scale, INTEGER_WEIGHTS): analysing it would
    leave out every quantised layer and report the few float ones (embeddings, head) as the model."""
    found = packed_integer_weights(tensors)
    if found:
        kind, keys = found
        raise FetchError(
            f"model {model!r}: {path} holds {len(keys)} weights quantised as {kind}, e.g. {keys[0]!r}: packed "
            "integers that zooscope does not dequantise, so its layers would be missing; analyse the checkpoint "
            "it was quantised from, a GGUF of the model (llama.cpp's quantisations are read: docs/formats.md), "
            "or a dequantised copy (transformers: model.dequantize(), then save_pretrained)")


def packed_integer_weights(tensors: Mapping[str, Any]) -> tuple[str, list[str]] | None:
    """(the quantisation, its weights' keys) of the first packed-integer format found, or None."""
    for marker, kind in PACKED_INTEGER_MARKERS:
        if keys := [key for key in tensors if key.endswith(marker)]:
            return kind, keys
    integers = [key for key in tensors if key.endswith("weight") and len(tensor_info(tensors, key).shape) >= 2
                and tensor_info(tensors, key).dtype not in FLOAT_DTYPES]
    if mlx := [key for key in integers if key.removesuffix("weight") + "scales" in tensors]:
        return MLX_PACKED, mlx
    scaled = [key for key in integers if f"{key}_scale" in tensors]
    return (INTEGER_WEIGHTS, scaled) if scaled else None


def _no_clash(model: str, contents: Mapping, part: Mapping, file: Path) -> None:
    clash = sorted(contents.keys() & part.keys())
    if clash:
        raise FetchError(f"model {model!r}: tensor {clash[0]!r} appears in more than one shard ({file})")


# ----------------------------------------------------------------------------- which files, which format


def sniff(path: Path) -> str | None:
    """The format of a weights file from its first bytes: "safetensors", "torch", "npz", "index"
    (a shard index: JSON with a weight_map) or None (none of these)."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    size = path.stat().st_size
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return zip_format(path)
    if len(head) >= 9 and 2 <= int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{":
        return "safetensors"
    if head.lstrip()[:1] == b"{":
        return "index"
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:  # a pickle: torch.save's legacy format
        return "torch"
    import tarfile

    if size and tarfile.is_tarfile(path):  # torch's oldest format: a tar of pickles
        return "torch"
    return None


def zip_format(path: Path) -> str | None:
    """A zip holding ``data.pkl`` is a PyTorch file (a TorchScript archive when its code is beside it:
    zooscope.sources.torchscript), one with ``archive_format`` and weights a torch.export archive
    (zooscope.sources.pt2), one of ``.npy`` members an .npz."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "torch"  # torch.load reports what is wrong with it
    if torchscript.archive_root(names) is not None:
        return "torchscript"
    if pt2.archive_root(names) is not None:
        return "pt2"
    if inert.pickle_root(names) is not None:
        return "torch"
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    return None


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
        if dcp.is_dcp_folder(path):
            return "dcp", [path / dcp.METADATA, *sorted(path.glob(dcp.CHUNKS_GLOB))]
        shards = sorted(path.glob("*.safetensors"))
        if shards:
            return "safetensors", shards
        looked_for = ", ".join(name for _, index, single in DIRECTORY_LAYOUTS for name in (index, single))
        raise FetchError(
            f"model {model!r}: no weights in directory {path}; looked for {looked_for}, *.safetensors, "
            f"{dcp.METADATA} with {dcp.CHUNKS_GLOB} (a torch.distributed.checkpoint folder)"
        )
    found = sniff(path)
    if found == "index":
        files = shard_files(path, model)
        formats = {sniff(file) for file in files}
        if len(formats) != 1 or not formats <= {"safetensors", "torch"}:
            raise FetchError(f"model {model!r}: the shards listed in {path} are not all safetensors "
                                  "or all PyTorch files")
        return formats.pop(), files
    if found is None:
        raise FetchError(
            f"model {model!r}: {path} is not a weights file zooscope reads (by its content: not "
            "safetensors, a PyTorch file or a NumPy .npz; empty, truncated or another format?); "
            "convert it to safetensors or give a model folder"
        )
    return found, [path]


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


# ----------------------------------------------------------------------------- readers


def safetensors_tensors(path: Path, model: str) -> dict[str, SafetensorsReader]:
    """Every tensor of a safetensors file -> the file's reader, from its header alone; a truncated
    or foreign file is a FetchError (safetensors checks the header against the file's size)."""
    from safetensors import SafetensorError

    reader = SafetensorsReader(path)
    try:
        return dict.fromkeys(reader.header(), reader)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise FetchError(f"model {model!r}: cannot read safetensors file {path}: {error}") from None


class NpzStore(LazyTensors):
    """The arrays of an .npz file, each read when asked (never with pickles), typed from the
    members' .npy headers."""

    def __init__(self, path: Path, model: str):
        import numpy as np

        self._infos: dict[str, TensorInfo] = {}
        try:
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    with archive.open(name) as member:
                        version = np.lib.format.read_magic(member)
                        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0)
                        shape, _, dtype = read_header(member)
                    self._infos[name.removesuffix(".npy")] = TensorInfo(safetensors_dtype(dtype), tuple(shape))
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            raise FetchError(f"model {model!r}: cannot read NumPy file {path}: {error}") from None
        super().__init__({key: (lambda k=key: _npz_array(path, k)) for key in self._infos})

    def describe(self, key: str) -> TensorInfo:
        return self._infos[key]


def _npz_array(path: Path, key: str):
    import numpy as np

    with np.load(path, allow_pickle=False) as archive:
        return archive[key]


def load_torch(path: Path, model: str) -> Any:
    """What a PyTorch file holds, loaded with ``weights_only=True``, else read as data.

    A zip-format file the weights-only unpickler rejects because it pickles objects (a whole
    nn.Module, ``torch.save(model)``; a YOLO-style checkpoint whose ``model`` is the module) is read
    again by zooscope.sources.inert, which builds every object as an inert record and calls
    nothing the file names; each pickled module becomes its state dict (module_states). A pickle
    that calls anything (a malicious one's ``os.system``), or a legacy-format one, is refused.
    """
    import torch

    try:
        # An open file, not the path: torch.load chooses a reader by the name's suffix
        # (".safetensors"), and here the content has decided already.
        with open(path, "rb") as handle, torch.serialization.safe_globals(data_only_globals()):
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if zipfile.is_zipfile(path):
            return objects_as_data(path, model, refusal_reason(error))
        raise FetchError(
            f"model {model!r}: refusing to load {path}: {refusal_reason(error)}; "
            f"zooscope never runs pickled code: {CONVERT_HINT}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as error:
        raise FetchError(
            f"model {model!r}: cannot read PyTorch file {path} (corrupt or truncated?): "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None


def objects_as_data(path: Path, model: str, why: str) -> Any:
    """A torch.save zip whose pickle holds objects, read as data (load_torch); when it calls
    anything, a FetchError with ``why`` (the weights-only unpickler's refusal) and what it calls."""
    try:
        loaded = inert.module_states(inert.load_objects(path))
    except pickle.UnpicklingError as error:
        raise FetchError(f"model {model!r}: refusing to load {path}: {why}, and {error}; zooscope never runs "
                         f"pickled code: {CONVERT_HINT}") from None
    except Exception as error:  # a damaged archive: any of zipfile's, pickle's and torch's errors
        raise FetchError(f"model {model!r}: cannot read PyTorch file {path} (corrupt or truncated?): "
                         f"{type(error).__name__}: {error}") from None
    log.warning("model %s: %s pickles objects, not only tensors; they are read as inert data and nothing in "
                "the file is run", model, path)
    return loaded


def data_only_globals() -> list:
    """Classes a training checkpoint pickles beside its state dict that make data and nothing else,
    allowed to the weights-only unpickler (torch.serialization.safe_globals): the ``args`` of
    torchvision's reference scripts and of most argparse scripts (argparse.Namespace, its paths),
    numpy scalars and arrays (a best accuracy from numpy, a loss history) and their dtypes. Each is
    built from plain values (a Namespace's attributes, an array's bytes); what they hold goes
    through the same unpickler, so a crafted file still cannot name a function to call."""
    import argparse
    import pathlib

    import numpy as np

    multiarray = getattr(np, "_core", None) or np.core  # numpy 2, numpy 1
    found: list = [argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath,
                   pathlib.PureWindowsPath, np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        function = getattr(multiarray.multiarray, name)
        # pickles name numpy 1's module or numpy 2's, whichever wrote them
        found += [(function, f"numpy.core.multiarray.{name}"), (function, f"numpy._core.multiarray.{name}")]
    found += sorted({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUOMm"}, key=lambda cls: cls.__name__)
    return found


def refusal_reason(error: pickle.UnpicklingError) -> str:
    """A one-line why from the weights-only unpickler's long message, in zooscope's words: never
    torch's advice to load the file with ``weights_only=False`` (docs/failures.md)."""
    text = str(error)
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
    if found:
        return f"loading it would run pickled code (it references {found.group(1)})"
    # the unpickler's own line, where it has one that is not about loading with weights_only=False
    detail = [line.strip() for line in text.split("WeightsUnpickler error:")[-1].splitlines()
              if line.strip() and "weights_only" not in line and "Weights only load failed" not in line]
    return ("it is not a tensors-only PyTorch file: loading it would need the full pickle machinery"
            + (f" (weights-only unpickler: {detail[0]})" if detail else "") + ", or it is corrupt")


# ----------------------------------------------------------------------------- wrappers and prefixes


def candidates(loaded: Any) -> dict[str, dict[str, Tensor]]:
    """Every mapping of a loaded checkpoint that holds a weight matrix (a floating-point tensor of
    rank 2 or more): the top level (TOP_LEVEL) when it does, and each mapping under a WRAPPER_KEYS
    key, recursively (WRAPPER_DEPTH levels), named by its path ("state_dict", "model/ema"). Each
    maps all its tensor entries (non-tensor entries, epoch counters and hyper-parameters, are not
    weights). Why a matrix: a checkpoint's own scalars (the ImageNet example's ``best_acc1`` is a
    0-d tensor) must not make its top level a second candidate beside its state_dict. Where no
    mapping holds a matrix, those holding any tensor are the candidates (the coverage table then
    says why none of their tensors is analysed)."""
    holding: dict[str, dict[str, Tensor]] = {}

    def walk(mapping: Mapping, path: str, depth: int) -> None:
        tensors = {k: v for k, v in mapping.items() if isinstance(k, str) and is_torch_tensor(v)}
        if tensors:
            holding[path or TOP_LEVEL] = tensors
        if depth < WRAPPER_DEPTH:
            for key in WRAPPER_KEYS:
                if isinstance(mapping.get(key), Mapping):
                    walk(mapping[key], f"{path}/{key}" if path else key, depth + 1)

    if isinstance(loaded, Mapping):
        walk(loaded, "", 0)
    with_matrices = {path: tensors for path, tensors in holding.items()
                     if any(value.is_floating_point() and value.dim() >= 2 for value in tensors.values())}
    return with_matrices or holding


def choose(found: Mapping[str, dict], model: str, path: Path, key: str | None) -> tuple[str | None, dict]:
    """(name, tensors) of the candidate to analyse: the one there is, or the one ``key`` names."""
    listing = ", ".join(f"{name} ({len(tensors)} tensors)" for name, tensors in found.items())
    if key is not None:
        if key not in found:
            raise FetchError(f"model {model!r}: checkpoint_key {key!r} is not among the tensor mappings "
                                  f"of {path}: {listing or 'none'}")
        return key, found[key]
    if not found:
        return None, {}
    if len(found) > 1:
        raise FetchError(
            f"model {model!r}: {path} holds several sets of tensors: {listing}; set the zoo column "
            f"checkpoint_key to the one to analyse (e.g. {next(iter(found))})"
        )
    return next(iter(found.items()))


def strip_prefixes(tensors: Mapping[str, Any], lightning: bool) -> tuple[str, ...]:
    """The prefixes to remove, in order: ``module.``/``_orig_mod.`` (and ``model.`` in a Lightning
    checkpoint) for as long as the name of every floating-point tensor starts with one.

    Why floating-point only: a wrapper's own counters sit beside the wrapped state dict
    (torch.optim.swa_utils.AveragedModel's ``n_averaged`` beside ``module.*``); they keep their
    names. No prefix is removed that would leave a name empty or make two names equal.
    """
    floating = [key for key in tensors if tensor_info(tensors, key).dtype in FLOAT_DTYPES]
    removed: tuple[str, ...] = ()
    options = ALWAYS_STRIPPED + ((LIGHTNING_PREFIX,) if lightning else ())
    while floating:
        current = [stripped(key, removed) for key in floating]
        prefix = next((p for p in options if all(k.startswith(p) and len(k) > len(p) for k in current)), None)
        if prefix is None or len({stripped(key, (*removed, prefix)) for key in tensors}) < len(tensors):
            break
        removed = (*removed, prefix)
    return removed


def stripped(key: str, prefixes: tuple[str, ...]) -> str:
    """``key`` without ``prefixes`` (each removed where the key, as far as stripped, starts with it)."""
    for prefix in prefixes:
        key = key.removeprefix(prefix)
    return key


def renamed(tensors: Mapping[str, Any], prefixes: tuple[str, ...]) -> Mapping[str, Any]:
    """The tensors under their names without ``prefixes``; a lazy store stays lazy."""
    if not hasattr(tensors, "describe"):
        return {stripped(key, prefixes): value for key, value in tensors.items()}
    return RenamedTensors(tensors, {stripped(key, prefixes): key for key in tensors})
