"""torch.distributed.checkpoint (DCP) folders: what FSDP and tensor-parallel training saves
(``dcp.save``; Lightning's and Accelerate's sharded checkpoints, torchtitan), read without
running code.

A DCP folder holds ``.metadata`` (a pickle of torch's metadata classes: each tensor's dtype,
size and chunks, and where each chunk's bytes are) and ``__{rank}_{n}.distcp`` files (each
chunk a ``torch.save`` blob, or its raw bytes). torch reads ``.metadata`` with ``pickle.load``,
which would run whatever a crafted file asks; here it is read by an unpickler that makes only
torch's metadata classes, torch.Size, dtypes, layouts and paths (DcpUnpickler) and refuses any
other global. Each chunk is loaded with ``torch.load(weights_only=True)``. A tensor is read when
asked, from its chunks (several when it was sharded across ranks), so only the candidate taken
(zooscope.sources.checkpoints.candidates: the model, not its optimizer state) is ever read.
"""
from __future__ import annotations

import dataclasses
import enum
import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zooscope.sources.base import CONVERT_HINT, FetchError
from zooscope.tensors import LazyTensors, TensorInfo, torch_dtype_name

if TYPE_CHECKING:
    from torch import Tensor

METADATA = ".metadata"
CHUNKS_GLOB = "*.distcp"
# Globals the metadata pickle may name besides the classes of torch.distributed.checkpoint.metadata.
ALLOWED_GLOBALS = {
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath"),
}
CONVERT_DCP = ("or convert the folder to one file where torch is trusted: "
               "python -m torch.distributed.checkpoint.format_utils dcp_to_torch FOLDER model.pt")


def is_dcp_folder(path: Path) -> bool:
    """Whether ``path`` is a DCP folder: ``.metadata`` and at least one ``*.distcp`` file."""
    return path.is_dir() and (path / METADATA).is_file() and any(path.glob(CHUNKS_GLOB))


class DcpUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata, making nothing but its data: torch's metadata dataclasses and enums,
    torch.Size, dtypes, layouts (``torch.serialization._get_layout``) and paths."""

    def find_class(self, module: str, name: str) -> Any:
        import torch
        from torch.distributed.checkpoint import metadata

        if module == metadata.__name__:
            found = getattr(metadata, name, None)
            if isinstance(found, type) and (dataclasses.is_dataclass(found) or issubclass(found, enum.Enum)):
                return found
        elif module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        elif (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"the metadata names {module}.{name}, which is not DCP metadata")


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a tensor: where it sits in the tensor and where its bytes are."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    start: int
    length: int


@dataclass(frozen=True)
class DcpTensor:
    """A tensor of a DCP folder: its fully qualified name, its place in the saved state dict
    (planner data: ``("model", "0.weight")``), dtype (a torch dtype), size and chunks."""

    fqn: str
    path: tuple
    dtype: Any
    size: tuple[int, ...]
    chunks: tuple[Chunk, ...]


def read_metadata(folder: Path, model: str) -> list[DcpTensor]:
    """The tensors a DCP folder's ``.metadata`` describes (non-tensor entries, pickled objects
    such as an epoch counter, are not weights and are left out)."""
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

    try:
        with open(folder / METADATA, "rb") as handle:
            found = DcpUnpickler(handle).load()
        storage, planner = found.storage_data, found.planner_data or {}
        tensors = []
        for fqn, entry in found.state_dict_metadata.items():
            if not isinstance(entry, TensorStorageMetadata):
                continue
            chunks = []
            for chunk in entry.chunks:
                info = storage[MetadataIndex(fqn, chunk.offsets)]  # (an index's own number is not compared)
                if getattr(info, "transform_descriptors", None):
                    raise FetchError(f"model {model!r}: {folder} stores {fqn!r} transformed "
                                     f"({', '.join(info.transform_descriptors)}), which zooscope does not read; "
                                     f"{CONVERT_DCP}")
                chunks.append(Chunk(tuple(chunk.offsets), tuple(chunk.sizes), info.relative_path, info.offset,
                                    info.length))
            path = planner.get(fqn, (fqn,))
            tensors.append(DcpTensor(fqn, tuple(path) if isinstance(path, (tuple, list)) else (fqn,),
                                     entry.properties.dtype, tuple(entry.size), tuple(chunks)))
        return tensors
    except pickle.UnpicklingError as error:
        raise FetchError(f"model {model!r}: refusing to load {folder / METADATA}: {error}; zooscope never runs "
                         f"pickled code: {CONVERT_HINT}") from None
    except FetchError:
        raise
    except Exception as error:  # a truncated or foreign pickle: any of pickle's and the classes' errors
        raise FetchError(f"model {model!r}: cannot read the DCP metadata {folder / METADATA} (corrupt or from "
                         f"another torch?): {type(error).__name__}: {error}") from None


def nested_placeholders(tensors: list[DcpTensor]) -> tuple[dict, dict[int, DcpTensor]]:
    """The saved state dict's nesting with a meta-device tensor (shape and dtype, no data) for
    each tensor, for zooscope.sources.checkpoints.candidates to choose from; and each
    placeholder's DcpTensor by the placeholder's id."""
    import torch

    nested: dict = {}
    by_placeholder: dict[int, DcpTensor] = {}
    for tensor in tensors:
        *parents, leaf = tensor.path
        level = nested
        for key in parents:
            level = level.setdefault(key, {})
        placeholder = torch.empty(tensor.size, dtype=tensor.dtype, device="meta")
        level[leaf] = placeholder
        by_placeholder[id(placeholder)] = tensor
    return nested, by_placeholder


class DcpStore(LazyTensors):
    """Tensors of a DCP folder under their names in the chosen candidate, each assembled from its
    chunks when asked (a torch tensor); ``describe`` from the metadata alone."""

    def __init__(self, folder: Path, tensors: dict[str, DcpTensor], model: str):
        super().__init__({name: (lambda t=tensor: self._read(t)) for name, tensor in tensors.items()})
        self.folder, self.tensors, self.model = folder, dict(tensors), model

    def describe(self, key: str) -> TensorInfo:
        return TensorInfo(torch_dtype_name(self.tensors[key].dtype), self.tensors[key].size)

    def _read(self, tensor: DcpTensor) -> Tensor:
        import torch

        out = torch.empty(tensor.size, dtype=tensor.dtype)
        for chunk in tensor.chunks:
            piece = self._chunk(tensor, chunk)
            out[tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes))] = piece.reshape(chunk.sizes)
        return out

    def _chunk(self, tensor: DcpTensor, chunk: Chunk) -> Tensor:
        import torch

        file = self.folder / chunk.file
        if Path(chunk.file).name != chunk.file or not file.is_file():
            raise FetchError(f"model {self.model!r}: the DCP metadata of {self.folder} puts {tensor.fqn!r} in "
                             f"{chunk.file!r}, which is not a file of the folder")
        with open(file, "rb") as handle:
            handle.seek(chunk.start)
            data = handle.read(chunk.length)
        if len(data) != chunk.length:
            raise FetchError(f"model {self.model!r}: {file} is truncated: {tensor.fqn!r} needs bytes "
                             f"{chunk.start}-{chunk.start + chunk.length}")
        if data[:2] == b"PK":  # a torch.save blob (DCP's default serialisation)
            try:
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
                raise FetchError(f"model {self.model!r}: cannot load {tensor.fqn!r} from {file}: "
                                 f"{str(error).splitlines()[0]}; {CONVERT_DCP}") from None
        if len(data) == math.prod(chunk.sizes) * tensor.dtype.itemsize:  # raw bytes
            return torch.frombuffer(bytearray(data), dtype=tensor.dtype)
        raise FetchError(f"model {self.model!r}: {tensor.fqn!r} in {file} is in a serialisation zooscope "
                         f"does not read; {CONVERT_DCP}")
