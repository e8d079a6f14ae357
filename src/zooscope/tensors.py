"""Stored tensors, read one at a time: lazy stores over safetensors files and other mappings, and
what every stage needs of a single tensor (its dtype and shape without reading it, its identity
for tied weights, its float32 widening, bytes and hash).

Which of a model's tensors are layers, and under what names, is zooscope.layers' concern; this
module knows nothing of modules or layer types.
"""
from __future__ import annotations

import functools
import hashlib
import math
import sys
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from zooscope.io import FLOAT_DTYPES, SAFETENSORS_DTYPES, SafetensorsReader, safetensors_dtype

if TYPE_CHECKING:
    import torch
    from torch import Tensor

# torch is imported only where a torch tensor or module is at hand: a safetensors file's weights
# are typed from its header and read as numpy arrays, so fetching a file: source needs no torch
# (about 2 s of every fetch job's start-up).


@functools.cache
def safetensors_dtypes() -> dict[str, "torch.dtype"]:
    """safetensors dtype names -> torch dtypes, from io.SAFETENSORS_DTYPES (imports torch)."""
    import torch

    return {name: getattr(torch, dtype.torch) for name, dtype in SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """A stored tensor's safetensors dtype and shape, from a file header."""

    dtype: str
    shape: tuple[int, ...]


class LazyTensors(Mapping):
    """Tensors made one at a time when asked, each by its ``makers`` entry (a read from a file, a
    weight of a module tree, a view of one): a model's weights are never all in memory at once."""

    def __init__(self, makers: Mapping[str, Callable[[], Tensor]]):
        self._makers = dict(makers)

    def __getitem__(self, key: str) -> Tensor:
        return self._makers[key]()

    def __contains__(self, key: object) -> bool:  # Mapping's default would make the tensor
        return key in self._makers

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)


class TensorStore(LazyTensors):
    """The tensors of safetensors files, read one at a time when asked, never all at once.

    Why: a state dict of a large model read whole, then converted, holds it twice. Each access
    maps just that tensor of its shard (io.SafetensorsReader says why per access): a numpy
    array, or a torch tensor for a dtype numpy lacks (bfloat16, float8). ``describe`` gives a
    tensor's dtype and shape (a TensorInfo) from the file header, without reading its data.
    Safetensors files cannot alias tensors, so tied weights do not arise here.
    """

    def __init__(self, readers: Mapping[str, SafetensorsReader]):
        """``readers``: each tensor key -> the reader of the file holding it (one per file, so
        each header is read once)."""
        super().__init__({key: partial(_read_tensor, reader, key) for key, reader in readers.items()})
        self._readers = dict(readers)

    def describe(self, key: str) -> TensorInfo:
        entry = self._readers[key].header()[key]
        return TensorInfo(entry["dtype"], tuple(entry["shape"]))

    def num_parameters(self) -> int:
        """Elements of the floating-point tensors, from the headers alone."""
        return sum(int(np.prod(t.shape)) for t in map(self.describe, self) if t.dtype in FLOAT_DTYPES)


class RenamedTensors(LazyTensors):
    """The tensors of a mapping (a lazy store or a dict) under other names, read when asked:
    ``names`` maps each name to the ``store``'s own (prefixes removed, a module's parameter names)."""

    def __init__(self, store: Mapping[str, Any], names: Mapping[str, str], aliases: Mapping[str, str] | None = None):
        """``aliases``: other keys of the store that hold one of the renamed tensors again (a tied
        weight a PyTorch file keeps under each of its names) -> the key read instead; ``covered``
        is them and the keys the names read."""
        super().__init__({new: partial(store.__getitem__, old) for new, old in names.items()})
        self.store, self.names, self.aliases = store, dict(names), dict(aliases or {})
        self.covered = frozenset(self.names.values()) | frozenset(self.aliases)

    def describe(self, key: str) -> TensorInfo:
        return tensor_info(self.store, self.names[key])


# The scale tensors a float8 weight ``{key}`` is stored with, in the order looked for: block-wise
# ``{key}_scale_inv`` (DeepSeek-V3, Qwen3-FP8: transformers' FineGrainedFP8, 128 x 128 blocks) and
# ``{key}_scale`` (compressed-tensors / llm-compressor, FBGEMM: per tensor, per output channel or
# per block). Both are multiplied in: W = W_fp8 * scale, each scale over its block.
FLOAT8_SCALE_SUFFIXES = ("_scale_inv", "_scale")
FLOAT8_DTYPES = ("F8_E4M3", "F8_E5M2")


class DequantisedFloat8(LazyTensors):
    """A lazy store whose float8 weights that have a scale tensor beside them (FLOAT8_SCALE_SUFFIXES)
    read as their float32 dequantisation, one at a time; every other tensor as stored.

    Why: a block-scaled FP8 checkpoint stores each 128 x 128 block of a weight in float8 with its
    own scale; the float8 values alone are not the layer's matrix (each block is off by its own
    factor), so their spectrum is not the layer's. ``scales``: weight key -> its scale's key;
    a scale that does not tile its weight (float8_blocks) is a ValueError naming both.
    """

    def __init__(self, store: Mapping[str, Any], scales: Mapping[str, str]):
        super().__init__({key: partial(self._read, key) for key in store})
        self.store, self.scales = store, dict(scales)
        self.blocks = {}
        for weight, scale in self.scales.items():
            shapes = tensor_info(store, weight).shape, tensor_info(store, scale).shape
            self.blocks[weight] = float8_blocks(*shapes)
            if self.blocks[weight] is None:
                raise ValueError(
                    f"float8 weight {weight!r} {list(shapes[0])}: its scale {list(shapes[1])} does not tile it in "
                    "blocks (expected a scalar, one scale per row, or ceil(rows / block) x ceil(columns / block) scales)")

    def _read(self, key: str):
        if key not in self.scales:
            return self.store[key]
        return dequantised_float8(np.asarray(self.store[key]), np.asarray(self.store[self.scales[key]]),
                                  self.blocks[key])

    def describe(self, key: str) -> TensorInfo:  # as stored: F8_E4M3 for a scaled weight too
        return tensor_info(self.store, key)


def with_float8_scales(store: Mapping[str, Any]) -> Mapping[str, Any]:
    """The store, its float8 ``...weight`` tensors that have a scale beside them read dequantised
    (DequantisedFloat8); the store itself when it has none."""
    scales = {}
    for key in store:
        if key.endswith("weight") and tensor_info(store, key).dtype in FLOAT8_DTYPES:
            found = [key + suffix for suffix in FLOAT8_SCALE_SUFFIXES if key + suffix in store]
            if found:
                scales[key] = found[0]
    return DequantisedFloat8(store, scales) if scales else store


def dequantised_float8(weight: np.ndarray, scale: np.ndarray, blocks: tuple[int, int]) -> np.ndarray:
    """float32 ``weight * scale``, each scale over its block of (rows, columns) ``blocks``
    (float8_blocks)."""
    block_rows, block_columns = blocks
    rows, columns = weight.shape[0], math.prod(weight.shape[1:])
    grid = scale.astype(np.float32).reshape(_grid_shape(scale.shape))
    out = weight.reshape(rows, columns).astype(np.float32)
    for block, start in enumerate(range(0, rows, block_rows)):  # one row of blocks at a time
        out[start:start + block_rows] *= np.repeat(grid[block], block_columns)[:columns]
    return out.reshape(weight.shape)


def float8_blocks(weight_shape: tuple, scale_shape: tuple) -> tuple[int, int] | None:
    """(rows, columns) of the block each scale applies to, or None when the scale does not tile
    the weight. A scale of shape (a, b) (or fewer axes: (a,) is (a, 1), a scalar (1, 1)) cuts
    the rows into a blocks and the columns into b, each block side the power of two that gives
    that count (a block of 128 over 576 rows makes 5 blocks, the last one short)."""
    if len(weight_shape) < 2 or len(scale_shape) > 2:
        return None
    rows, columns = weight_shape[0], math.prod(weight_shape[1:])
    counts = _grid_shape(scale_shape)
    sizes = (_block(rows, counts[0]), _block(columns, counts[1]))
    return None if None in sizes else sizes


def _grid_shape(scale_shape: tuple) -> tuple[int, int]:
    return tuple(scale_shape) + (1,) * (2 - len(scale_shape))


def _block(n: int, count: int) -> int | None:
    """The power-of-two block size that cuts n into ``count`` blocks (the last may be short), or None."""
    size = 1 << max(0, math.ceil(math.log2(math.ceil(n / count)))) if count else 0
    return size if size and math.ceil(n / size) == count else None


# MXFP4 (OCP microscaling; gpt-oss's experts): ``{key}_blocks``, uint8 (..., rows, groups, 16), two
# 4-bit E2M1 values per byte, the low nibble first; ``{key}_scales``, uint8 (..., rows, groups), the
# power of two 2^(s - 127) of each group of 32 values.
MXFP4_SUFFIXES = ("_blocks", "_scales")
E2M1_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


class Mxfp4Tensor:
    """An MXFP4 tensor, decoded when indexed: ``[e]`` decodes expert e's matrix alone, so a stack
    of experts is never decoded whole (a gpt-oss-20b block's would be 1 GB in bfloat16).

    In transformers' layout: stacked experts' blocks (E, rows, groups, 16) are (E, groups * 32,
    rows), as transformers dequantises them for its modules (gpt-oss's ``gate_up_proj`` is
    (E, hidden, 2 x intermediate)); a matrix's (rows, groups, 16) are (rows, groups * 32). Values
    are bfloat16, which holds every MXFP4 value exactly (two significant bits, float32's exponents)."""

    def __init__(self, blocks: np.ndarray, scales: np.ndarray):
        self.blocks, self.scales = blocks, scales
        self.shape = mxfp4_shape(blocks.shape)
        self.ndim = len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)

    def __getitem__(self, index):
        if self.ndim == 3 and isinstance(index, (int, np.integer)):
            return dequantised_mxfp4(self.blocks[index], self.scales[index]).T.astype(self.dtype, order="C")
        return np.asarray(self)[index]

    def __array__(self, dtype=None, copy=None):
        whole = (np.stack([self[e] for e in range(self.shape[0])]) if self.ndim == 3
                 else dequantised_mxfp4(self.blocks, self.scales).astype(self.dtype))
        return whole if dtype is None else whole.astype(dtype)


def mxfp4_shape(blocks_shape: tuple) -> tuple:
    """The decoded shape of MXFP4 blocks (Mxfp4Tensor: stacked experts in transformers' layout)."""
    *lead, rows, groups, _ = blocks_shape
    return (*lead, groups * 32, rows) if lead else (rows, groups * 32)


def dequantised_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 (rows, groups * 32) from MXFP4 blocks (rows, groups, 16) and scales (rows, groups)."""
    blocks = np.asarray(blocks, dtype=np.uint8)
    values = np.empty(blocks.shape[:-1] + (32,), dtype=np.float32)
    values[..., 0::2] = E2M1_VALUES[blocks & 0x0F]
    values[..., 1::2] = E2M1_VALUES[blocks >> 4]
    np.ldexp(values, (np.asarray(scales, dtype=np.int32) - 127)[..., None], out=values)
    return values.reshape(blocks.shape[0], -1)


class DequantisedMxfp4(LazyTensors):
    """A lazy store whose MXFP4 pairs (``{key}_blocks`` with ``{key}_scales`` of matching shape)
    are one tensor ``{key}``, an Mxfp4Tensor in the blocks' place, under the name transformers
    loads it as (gpt-oss's ``mlp.experts.gate_up_proj``); the scales stay (coverage: quantisation
    scales) and every other tensor is as stored.

    Why: the packed bytes are no matrix, so without this a gpt-oss checkpoint's experts, nearly all
    of its weights, would be left out as integer buffers."""

    def __init__(self, store: Mapping[str, Any], pairs: Mapping[str, str]):
        self.store, self.pairs = store, dict(pairs)  # {key}: its blocks' key
        blocks = {block: key for key, block in self.pairs.items()}
        super().__init__({blocks.get(key, key): partial(self._read, blocks.get(key, key)) for key in store})

    def _read(self, key: str):
        if key not in self.pairs:
            return self.store[key]
        tensor = Mxfp4Tensor(np.asarray(self.store[self.pairs[key]]), np.asarray(self.store[key + "_scales"]))
        return tensor if tensor.ndim == 3 else np.asarray(tensor)  # a matrix is one layer: decoded whole

    def describe(self, key: str) -> TensorInfo:
        if key not in self.pairs:
            return tensor_info(self.store, key)
        return TensorInfo("BF16", mxfp4_shape(tensor_info(self.store, self.pairs[key]).shape))


def with_mxfp4(store: Mapping[str, Any]) -> Mapping[str, Any]:
    """The store, its MXFP4 pairs read as one dequantised tensor each (DequantisedMxfp4); the store
    itself when it has none. A pair whose shapes do not match is a ValueError naming it."""
    blocks_suffix, scales_suffix = MXFP4_SUFFIXES
    pairs = {}
    for key in store:
        base = key.removesuffix(blocks_suffix)
        if key.endswith(blocks_suffix) and base + scales_suffix in store and tensor_info(store, key).dtype == "U8":
            shapes = tensor_info(store, key).shape, tensor_info(store, base + scales_suffix).shape
            if len(shapes[0]) < 3 or shapes[0][-1] != 16 or tuple(shapes[0][:-1]) != tuple(shapes[1]):
                raise ValueError(f"MXFP4 blocks {key!r} {list(shapes[0])} and scales {list(shapes[1])}: expected "
                                 "(..., rows, groups, 16) bytes and (..., rows, groups) scales")
            pairs[base] = key
    return DequantisedMxfp4(store, pairs) if pairs else store


def dequantised(store: Mapping[str, Any]) -> Mapping[str, Any]:
    """The store with its quantised weights read as their values (with_float8_scales, with_mxfp4)."""
    return with_mxfp4(with_float8_scales(store))


def _read_tensor(reader: SafetensorsReader, key: str):
    """The tensor as an array over a private map of the file's bytes (no copy:
    io.SafetensorsReader), in its stored dtype (bf16 and f8 as ml_dtypes' types)."""
    return reader.mapped(key)


def tensor_info(tensors: Mapping[str, Any], key: str) -> TensorInfo:
    """dtype and shape of a tensor of a lazy store (from its header, nothing read) or of a mapping."""
    describe = getattr(tensors, "describe", None)
    return describe(key) if describe else describe_tensor(tensors[key])


def describe_tensor(value) -> TensorInfo:
    """The safetensors dtype name and shape of a torch tensor or numpy array."""
    if isinstance(value, TensorInfo):
        return value
    if isinstance(value, np.ndarray):
        return TensorInfo(safetensors_dtype(value.dtype), tuple(value.shape))
    return TensorInfo(torch_dtype_name(value.dtype), tuple(value.shape))


def torch_dtype_name(dtype) -> str:
    """The safetensors name of a torch dtype ("BF16"), or torch's own for one safetensors lacks."""
    names = {candidate: name for name, candidate in safetensors_dtypes().items()}
    return names.get(dtype, str(dtype).removeprefix("torch."))


def as_torch(value):
    """A torch tensor of the same values and dtype (bf16 and float8 numpy arrays of ml_dtypes by
    their bytes, which torch.as_tensor does not take); a torch tensor as is."""
    if is_torch_tensor(value):
        return value
    import torch

    array = np.ascontiguousarray(value)
    dtype = safetensors_dtypes()[safetensors_dtype(array.dtype)]
    raw = torch.from_numpy(array.reshape(-1).view(np.uint8).copy())
    return raw.view(dtype).reshape(array.shape)


def is_torch_tensor(value: object) -> bool:
    """Whether ``value`` is a torch tensor; without importing torch (no torch: no tensor)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def num_parameters(tensors: Iterable[Tensor]) -> int:
    """Elements of the distinct floating-point torch tensors among ``tensors`` (tied ones once)."""
    seen: set[tuple] = set()
    total = 0
    for tensor in tensors:
        if is_torch_tensor(tensor) and tensor.is_floating_point():
            key = storage_key(tensor)
            if key not in seen:
                seen.add(key)
                total += tensor.numel()
    return total


def storage_key(tensor: Tensor) -> tuple:
    """Identifies the memory a tensor views, so tied weights are recognised however reached."""
    if tensor.numel() == 0 or tensor.is_meta:  # these have data_ptr 0 without sharing anything
        return ("no data", id(tensor))
    return (
        tensor.device.type,
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
        tensor.dtype,
    )


# entries of one block that tensor_sha256 widens to float32 at a time (16 MiB of float32)
HASH_BLOCK_ENTRIES = 1 << 22


def tensor_sha256(tensor) -> str:
    """sha256 of the float32 C-contiguous bytes: a layer's identity for the per-layer cache.

    A float32 contiguous tensor is hashed in place; any other is widened a block of
    HASH_BLOCK_ENTRIES entries at a time into the same digest (sha256 streams), so hashing a bf16
    embedding of 65M entries costs 16 MiB, not its 260 MB float32 copy."""
    digest = hashlib.sha256()
    if isinstance(tensor, np.ndarray):
        flat = tensor.reshape(-1) if tensor.flags.c_contiguous else np.ascontiguousarray(tensor).reshape(-1)
        if flat.dtype == np.float32:
            digest.update(memoryview(flat).cast("B"))
        else:
            block = np.empty(min(flat.size, HASH_BLOCK_ENTRIES), dtype=np.float32)
            for start in range(0, flat.size, HASH_BLOCK_ENTRIES):
                part = block[: min(HASH_BLOCK_ENTRIES, flat.size - start)]
                np.copyto(part, flat[start:start + part.size], casting="unsafe")
                digest.update(memoryview(part).cast("B"))
        return digest.hexdigest()
    import torch

    flat = tensor.detach().cpu().contiguous().reshape(-1)
    for start in range(0, flat.numel(), HASH_BLOCK_ENTRIES):
        part = flat[start:start + HASH_BLOCK_ENTRIES].to(torch.float32)
        digest.update(memoryview(part.numpy()).cast("B"))
    return digest.hexdigest()


def as_float32(tensor):
    """A float32, contiguous CPU tensor (detached) or numpy array; no copy when it already is one
    (a layer is hashed as its float32 widening, whatever its stored dtype)."""
    if isinstance(tensor, np.ndarray):
        return np.ascontiguousarray(tensor, dtype=np.float32)
    import torch

    return tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()


def stored_bytes(tensor) -> memoryview:
    """The C-contiguous bytes of a torch tensor or numpy array in its own dtype."""
    if isinstance(tensor, np.ndarray):
        return memoryview(np.ascontiguousarray(tensor).reshape(-1).view(np.uint8))
    import torch

    return memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).cast("B")
