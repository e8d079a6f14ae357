"""Which weight tensors of a model are analysed, in what order, under what names.

Two routes lead to the same layer list. With a module tree (``train:``/``random:``, later the
hub loaders) the module class says what a weight is. A bare state dict (``file:`` sources) has
no classes, so the tensor's name and rank decide. Each layer is one weight tensor; biases, norms
and other 1-D tensors are never analysed, and a tensor reached twice (tied weights) counts once.

Layer names become file names in later stages (``results/esd/{model}/{layer}.npy``), so they
are restricted to ``[A-Za-z0-9._-]`` and made unique here, once.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

# Module classes whose ``.weight`` is analysed, and the type name each is recorded under.
# Order matters only for subclasses; these four are unrelated classes.
MODULE_TYPES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Linear, "Linear"),
    (nn.Conv1d, "Conv1d"),
    (nn.Conv2d, "Conv2d"),
    (nn.Embedding, "Embedding"),
)

# Rank of a bare tensor -> layer type (2-D is an Embedding when its name says so).
RANK_TYPES: dict[int, str] = {2: "Linear", 3: "Conv1d", 4: "Conv2d"}

_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Layer:
    """One analysed weight: its file-safe name, its key in model.safetensors, type, shape, depth."""

    name: str
    tensor: str
    type: str
    shape: list[int]
    depth: int
    sha256: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LayerList:
    """The layers in depth order and their float32, contiguous weights keyed by ``Layer.tensor``."""

    layers: list[Layer]
    tensors: dict[str, Tensor]


def layers_from_module(model: nn.Module) -> LayerList:
    """The weights of Linear/Conv1d/Conv2d/Embedding modules, in registration order."""
    found = []
    for path, module in model.named_modules():
        kind = module_type(module)
        weight = getattr(module, "weight", None) if kind else None
        if isinstance(weight, Tensor):
            found.append((f"{path}.weight" if path else "weight", kind, weight))
    return _build(found)


def layers_from_state_dict(state: Mapping[str, Tensor]) -> LayerList:
    """The weights of a bare state dict, typed by name and rank, in natural key order.

    Natural order ("layer.2" before "layer.10") stands in for depth, because safetensors files
    do not keep the order tensors were registered in; using it for every file format makes the
    same weights give the same layer list whatever format they came in.
    """
    found = []
    for key in sorted(state, key=natural_key):
        kind = state_dict_type(key, state[key])
        if kind:
            found.append((key, kind, state[key]))
    return _build(found)


def module_type(module: nn.Module) -> str | None:
    """The layer type name of ``module``, or None when its weights are not analysed."""
    for cls, name in MODULE_TYPES:
        if isinstance(module, cls):
            return name
    return None


def state_dict_type(key: str, value: object) -> str | None:
    """The layer type of a state-dict entry from its name and rank, or None if not a layer.

    Only floating-point tensors named ``...weight`` of rank 2-4 are layers: 1-D/0-D tensors are
    biases and norms, integer tensors are buffers (counters, index tables).
    """
    if not (isinstance(value, Tensor) and value.is_floating_point() and key.endswith("weight")):
        return None
    kind = RANK_TYPES.get(value.dim())
    if kind == "Linear" and "embed" in key.lower():
        return "Embedding"
    return kind


def num_parameters(tensors: Iterable[Tensor]) -> int:
    """Elements of the distinct floating-point tensors among ``tensors`` (tied ones once)."""
    seen: set[tuple] = set()
    total = 0
    for tensor in tensors:
        if isinstance(tensor, Tensor) and tensor.is_floating_point():
            key = storage_key(tensor)
            if key not in seen:
                seen.add(key)
                total += tensor.numel()
    return total


def storage_key(tensor: Tensor) -> tuple:
    """Identifies the memory a tensor views, so tied weights are recognised however reached."""
    if tensor.numel() == 0:  # empty tensors share data_ptr 0 without sharing anything
        return ("empty", id(tensor))
    return (
        tensor.device.type,
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
        tensor.dtype,
    )


def tensor_sha256(tensor: Tensor) -> str:
    """sha256 of the float32 C-contiguous bytes: a layer's identity for the per-layer cache."""
    array = as_float32(tensor).numpy()
    return hashlib.sha256(memoryview(array).cast("B")).hexdigest()


def as_float32(tensor: Tensor) -> Tensor:
    """A detached float32, contiguous CPU copy (bf16/fp16 weights are analysed in float32)."""
    return tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()


def safe_name(name: str) -> str:
    """``name`` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_``.

    A leading ``.`` or ``-`` is replaced too: it would make a hidden file or look like an option.
    """
    cleaned = _UNSAFE_CHARACTERS.sub("_", name) or "_"
    return "_" + cleaned[1:] if cleaned[0] in ".-" else cleaned


def layer_name(tensor_key: str) -> str:
    """The module path of a weight key ("net.0.weight" -> "net.0"); the key itself if no path."""
    return tensor_key.removesuffix(".weight") or tensor_key


def natural_key(text: str) -> list:
    """Sort key that orders embedded integers numerically: "h.2" < "h.10"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def _build(found: list[tuple[str, str, Tensor]]) -> LayerList:
    """Drop repeated (tied) tensors, name the rest uniquely and hash their float32 bytes."""
    seen: set[tuple] = set()
    names: set[str] = set()
    layers: list[Layer] = []
    tensors: dict[str, Tensor] = {}
    for key, kind, weight in found:
        identity = storage_key(weight)
        if identity in seen:
            continue
        seen.add(identity)
        value = as_float32(weight)
        name = _unique(safe_name(layer_name(key)), names)
        layers.append(
            Layer(name, key, kind, list(value.shape), len(layers), tensor_sha256(value))
        )
        tensors[key] = value
    return LayerList(layers, tensors)


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... when sanitising made two names collide."""
    candidate, counter = name, 1
    while candidate.lower() in taken:
        counter += 1
        candidate = f"{name}_{counter}"
    taken.add(candidate.lower())
    return candidate
