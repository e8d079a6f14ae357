"""ONNX models (``.onnx``): the initializers that Gemm, MatMul, Conv and ConvTranspose nodes
consume as weights, read with the ``onnx`` package (no runtime: nothing in the graph is run).

Typed by the consuming op and oriented by its attributes into PyTorch's layout:

- ``Gemm`` (Y = alpha A' B' + beta C, A' = A^T if transA, B' = B^T if transB): a weight in B is
  Linear (out, in) = B if transB else B^T (torch's exporter writes transB=1 and the Linear's own
  weight); a weight in A is the matrix applied on the left, A' (out, in). C is a bias.
- ``MatMul`` (Y = A B): a 2-D weight in B is (in, out), transposed; in A it is (out, in) as is.
- ``Conv``: W (out, in/group, *kernel) is PyTorch's layout: Conv1d (rank 3), Conv2d (rank 4).
- ``ConvTranspose``: W (in, out/group, *kernel); its first two axes are swapped to (out, in, ...).

Layers come in graph order (ONNX keeps nodes topologically sorted), each initializer once: a
second node consuming the same initializer is recorded as tied. A layer is named after its
initializer ("fc1.weight" -> "fc1"), or, for a name the exporter made up (torch's
"onnx::MatMul_12", its dynamo exporter's folded "val_12"), after its node's module (the dynamo
exporter's name scopes; "/fc2/MatMul" -> "fc2"). Weights inside subgraphs (If, Loop)
are not looked for. Initializers kept in external data files are read one at a time from those
files, which must lie in the model's folder; a missing one is an error naming it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from zooscope.tensors import as_float32
from zooscope.sources.formats import (
    BIAS, NORM, RANK, TIED, FormatLayer, FormatWeights, NotAnalysed, StoredTensor, why_not,
)

WEIGHT_OPS = ("Gemm", "MatMul", "Conv", "ConvTranspose")
NORM_OPS = ("BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
            "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization")
FLOAT_TYPES = ("FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE")
CONV_TYPES = {3: "Conv1d", 4: "Conv2d"}
# Initializer names an exporter made up: torch's TorchScript exporter's ("onnx::MatMul_12") and the
# constants its dynamo exporter folds (a Linear's weight transposed for MatMul: "val_12").
MADE_UP = re.compile(r".*::.*|val_\d+")


def read_onnx(path: Path, model: str) -> FormatWeights:
    """The weights of an ONNX model file (module docstring)."""
    import onnx

    from zooscope.sources.base import FetchError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise FetchError(f"model {model!r}: cannot parse ONNX file {path}: {error}") from None
    graph = proto.graph
    folder = Path(os.path.abspath(path.parent))
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    stored = {name: _stored(tensor) for name, tensor in initializers.items()}
    for tensor in initializers.values():
        _check_external(tensor, folder, path, model)

    layers: list[FormatLayer] = []
    skipped: dict[str, NotAnalysed] = {}
    owner: dict[str, str] = {}  # initializer -> the layer it became
    for position, node in enumerate(graph.node):
        for slot, name in enumerate(node.input):
            if name not in initializers:
                continue
            use = _use(node, slot, stored[name])
            if isinstance(use, str):  # a reason
                skipped.setdefault(name, NotAnalysed(stored[name], use, node.op_type))
                continue
            kind, orient = use
            if name in owner:
                skipped.setdefault(name, NotAnalysed(stored[name], TIED, owner[name]))
                continue
            layer = _layer_name(name, node, position)
            owner[name] = layer
            skipped.pop(name, None)
            # the oriented shape from a zero-stride view: nothing is read or allocated
            shape = orient(np.broadcast_to(np.float32(0), stored[name].shape)).shape
            layers.append(FormatLayer(layer, kind, stored[name], tuple(shape),
                                      lambda t=initializers[name], o=orient: as_float32(o(_array(t, folder)))))
    for name in initializers:
        if name not in owner and name not in skipped:
            floating = stored[name].dtype in FLOAT_TYPES
            skipped[name] = NotAnalysed(stored[name], why_not(stored[name], floating=floating))
    meta = {"producer": f"{proto.producer_name} {proto.producer_version}".strip(),
            "ir_version": int(proto.ir_version),
            "opsets": {entry.domain or "ai.onnx": int(entry.version) for entry in proto.opset_import}}
    return FormatWeights("onnx", tuple(layers), tuple(skipped[name] for name in initializers if name in skipped),
                         meta)


def _use(node, slot: int, stored: StoredTensor):
    """(type, orient) when ``node`` consumes the initializer in input ``slot`` as a weight, else
    the reason it is not one."""
    op, rank = node.op_type, len(stored.shape)
    if op in NORM_OPS:
        return NORM
    if op not in WEIGHT_OPS or stored.dtype not in FLOAT_TYPES:
        if rank == 1 and stored.name.endswith("bias"):  # a bias added after a MatMul
            return BIAS
        return why_not(stored, floating=stored.dtype in FLOAT_TYPES)
    attributes = {attribute.name: attribute for attribute in node.attribute}

    def flag(name: str) -> bool:
        return name in attributes and attributes[name].i != 0

    if op == "Gemm":
        if slot == 2:
            return BIAS
        if rank != 2:
            return RANK
        if slot == 1:  # Y = X B': the weight (out, in) is B' transposed
            return "Linear", (lambda w: w) if flag("transB") else np.transpose
        return "Linear", np.transpose if flag("transA") else (lambda w: w)
    if op == "MatMul":
        if rank != 2:
            return RANK if rank > 2 else why_not(stored, floating=True)
        return "Linear", np.transpose if slot == 1 else (lambda w: w)
    # Conv, ConvTranspose: X, W, B
    if slot == 2:
        return BIAS
    if slot != 1:
        return why_not(stored, floating=True)
    if rank not in CONV_TYPES:
        return RANK
    if op == "ConvTranspose":
        return CONV_TYPES[rank], lambda w: np.swapaxes(w, 0, 1)
    return CONV_TYPES[rank], lambda w: w


def _layer_name(initializer: str, node, position: int) -> str:
    """The initializer's name without ``.weight``, or, for a made-up name (MADE_UP), its node's
    module: the module scope torch's dynamo exporter records on the node (module_scope), else
    the node's path.

    torch's TorchScript exporter names a node by its module scopes, a child of a container under
    its path from the container (``/blocks/blocks.0/attn/qkv/MatMul``): such a scope replaces its
    parent's, so that the name is the module's (``blocks.0.attn.qkv``), as its initializer would be
    named.
    """
    if not MADE_UP.fullmatch(initializer):
        return initializer.removesuffix(".weight") or initializer
    if scope := module_scope(node):
        return scope
    if node.name:
        parts = [part for part in node.name.split("/") if part]
        if len(parts) > 1 and parts[-1].split("_")[0] == node.op_type:
            parts = parts[:-1]  # torch's exporter ends a node's path with its op type
        path: list[str] = []
        for part in parts:
            if path and part.startswith(f"{path[-1]}."):
                path[-1] = part
            else:
                path.append(part)
        return ".".join(path)
    return f"{node.op_type}_{position}"


def module_scope(node) -> str | None:
    """The path of the module a node belongs to, from the metadata torch's dynamo exporter (the
    default from torch 2.9) writes on each node: ``pkg.torch.onnx.name_scopes`` (the module paths
    from the root, then the op's own name) beside ``pkg.torch.onnx.class_hierarchy`` (their
    classes, then the op, ``aten.linear.default``); None without it or at the root."""
    import ast

    metadata = {entry.key: entry.value for entry in node.metadata_props}
    try:
        scopes = ast.literal_eval(metadata.get("pkg.torch.onnx.name_scopes", "None"))
        classes = ast.literal_eval(metadata.get("pkg.torch.onnx.class_hierarchy", "None"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):  # not the exporter's lists
        return None
    if not (isinstance(scopes, list) and isinstance(classes, list) and len(scopes) == len(classes)):
        return None
    modules = [scope for scope, cls in zip(scopes, classes)
               if isinstance(scope, str) and isinstance(cls, str) and not cls.startswith(("aten.", "prims."))]
    return modules[-1] if modules and modules[-1] else None


def _stored(tensor) -> StoredTensor:
    import onnx

    return StoredTensor(tensor.name, tuple(int(d) for d in tensor.dims), onnx.TensorProto.DataType.Name(tensor.data_type))


def _check_external(tensor, folder: Path, path: Path, model: str) -> None:
    """An initializer in an external file: the file must be in the model's folder and hold it."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    from zooscope.sources.base import FetchError

    if not uses_external_data(tensor):
        return
    info = ExternalDataInfo(tensor)
    location = Path(os.path.normpath(folder / info.location))
    if not location.is_relative_to(folder):
        raise FetchError(f"model {model!r}: ONNX file {path}: initializer {tensor.name!r} points outside "
                         f"the model's folder ({info.location!r}); refusing to read it")
    if not location.is_file():
        raise FetchError(
            f"model {model!r}: ONNX file {path} keeps initializer {tensor.name!r} in the external data file "
            f"{info.location!r}, which is missing from {folder}; copy that file next to the .onnx file, or "
            "save the model with its weights inside (onnx.save(model, path, save_as_external_data=False))")
    length = info.length if info.length else None
    if length is not None and (info.offset or 0) + length > location.stat().st_size:
        raise FetchError(f"model {model!r}: ONNX external data file {location} is shorter than initializer "
                         f"{tensor.name!r} needs (truncated?); copy it again")


def _array(tensor, folder: Path) -> np.ndarray:
    """The initializer's values (read from its external file if it has one)."""
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor, base_dir=str(folder))
