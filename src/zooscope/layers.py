"""Which weight tensors of a model are analysed, in what order, under what names.

Two routes lead to the same layer list. With a module tree (``train:``/``random:`` and the hub
sources) the module class says what a weight is:

- Linear, Conv1d, Conv2d, Embedding: their ``.weight``, as is (subclasses included); a class
  outside torch.nn whose name says one of them, by its own ``weight`` of that rank (module_type).
- transformers' ``Conv1D`` (GPT-2 style models) is a linear layer that stores its weight
  transposed, (in, out): it is recorded as ``Linear`` with the weight transposed to (out, in),
  so that the matrix is the linear map like every other Linear's. Its tensor keeps its name.
- ``nn.MultiheadAttention`` fuses the query, key and value projections in one
  ``in_proj_weight`` (3E, E): it becomes three ``Linear`` layers ``{path}.q_proj``,
  ``{path}.k_proj``, ``{path}.v_proj`` (tensors ``{path}.q_proj.weight``...), each (E, E), in
  that order (the rows of ``in_proj_weight`` in order); with separate key/value dimensions the
  ``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` give the same three names. Its
  ``out_proj`` is an ordinary Linear child.
- A mixture-of-experts block of transformers 5 (``...Experts``: each projection one 3-D
  parameter, experts first) is one Linear per expert, ``{path}.{projection}.{e}``
  (expert_matrices); a ``...Router`` module's bare ``weight`` is a Linear.
 A bare state dict (``file:`` sources) has
no classes, so the tensor's name and rank decide (name_typed; a tensor holding several matrices,
stacked experts or a MultiheadAttention's in_proj_weight, is split as a tree would split it:
split_layers). Each layer is one weight tensor; biases, norms and other 1-D tensors are never
analysed, and a tensor reached twice (tied weights) counts once.

Layer names become file names in later stages (``results/esd/{model}/{layer}.npy``), so they
are restricted to ``[A-Za-z0-9._-]`` (``zooscope.io.safe_filename``) and made unique here, once.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np

from zooscope.io import FLOAT_DTYPES, safe_filename
from zooscope.tensors import (
    LazyTensors, RenamedTensors, TensorInfo, as_torch, describe_tensor, is_torch_tensor, storage_key, tensor_info,
    tensor_sha256,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

# torch is imported only where a module is at hand (zooscope.tensors says why).

# Classes of torch.nn whose ``.weight`` is analysed; a layer's type is its class's name. Order
# matters only for subclasses; these four are unrelated classes.
MODULE_TYPES: tuple[str, ...] = ("Linear", "Conv1d", "Conv2d", "Embedding")

# Rank of a bare tensor -> layer type (2-D is an Embedding when its name says so).
RANK_TYPES: dict[int, str] = {2: "Linear", 3: "Conv1d", 4: "Conv2d"}

# Attributes that give how many experts a fused module holds in blocks of rows of a matrix (DBRX).
EXPERT_COUNTS = ("num_experts", "moe_num_experts", "num_local_experts")

# A path component naming a mixture of experts' block: its 3-D tensors stack one matrix per expert.
EXPERTS_NAME = re.compile(r"expert|moe", re.IGNORECASE)

# (word in a class name, layer type, rank of its weight) for classes outside torch.nn (module_type).
NAMED_TYPES: tuple[tuple[str, str, int], ...] = (
    ("conv1d", "Conv1d", 3), ("conv2d", "Conv2d", 4), ("embedding", "Embedding", 2), ("linear", "Linear", 2))


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
    """The layers in depth order and their weights keyed by ``Layer.tensor``, in their stored
    dtype (bf16 stays bf16: the model cache is no wider than the checkpoint).

    ``tensors`` makes each weight when asked (a LazyTensors): fetch writes them one at a time, so
    a model is never held twice. ``tied``: tensor key -> the key of the analysed weight it is
    tied to (left out); ``left_out``: tensor key -> (reason, detail) of a weight that the layer
    selection dropped (zooscope.sources.selection).
    """

    layers: list[Layer]
    tensors: Mapping[str, Any]
    tied: Mapping[str, str] = field(default_factory=dict)
    left_out: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    dtypes: Mapping[str, str] = field(default_factory=dict)  # tensor key -> its stored safetensors dtype


@dataclass(frozen=True)
class ModuleWeight:
    """One analysed matrix of a module, and how it is derived from the module's parameter."""

    key: str  # its tensor key in model.safetensors
    kind: str  # its layer type
    parameter: str  # the parameter it comes from, by its name in the module tree
    part: int | None = None  # None: the whole parameter; i: the i-th third of its rows (fused q/k/v)
    transpose: bool = False  # transformers' Conv1D keeps (in, out): transposed to the linear map
    expert: int | None = None  # None: the whole parameter; e: its e-th matrix (fused experts)
    experts: int = 0  # how many the parameter holds: its first axis (3-D) or blocks of its rows (DBRX's 2-D)
    # A mixture-of-experts weight (fused experts, a router) that a checkpoint in the per-expert
    # layout holds under other names: a tree over it goes without (unclaimed_weights has them).
    optional: bool = False
    # A weight-norm parametrisation's magnitude g (``parametrizations.weight.original0``; then
    # ``parameter`` is its direction v, ``original1``) and the axis it keeps: the matrix is
    # torch._weight_norm(v, g, dim), the weight the module computes (weight_normed).
    norm: str | None = None
    norm_dim: int = 0

    def matrix(self, value):
        """The analysed matrix, from the parameter's value, a torch tensor or a numpy array read
        from a checkpoint (a view: nothing is copied)."""
        if self.expert is not None:  # (E, rows, columns), indexed (a lazy MXFP4 stack too), or E row blocks
            value = value[self.expert] if value.ndim == 3 else value.reshape(self.experts, -1, value.shape[-1])[self.expert]
        if self.part is not None:
            rows = value.shape[0] // 3
            value = value[self.part * rows : (self.part + 1) * rows]
        return value.T if self.transpose else value

    @property
    def derived(self) -> bool:
        """Whether the matrix is not the parameter itself but a part, an expert or a transpose of
        it, or computed from it (weight norm)."""
        return self.part is not None or self.expert is not None or self.transpose or self.norm is not None

    def value(self, weights: Mapping[str, Any]):
        """The parameter's value from ``weights`` (a checkpoint under the tree's names); for a
        weight-norm parametrisation, the weight it computes from its two tensors."""
        if self.norm is None:
            return weights[self.parameter]
        return weight_normed(weights[self.parameter], weights[self.norm], self.norm_dim)


def weight_normed(direction, magnitude, dim: int):
    """torch.nn.utils.parametrizations.weight_norm's weight, g v / ||v|| with the norm over every
    axis but ``dim`` (torch._weight_norm itself, so that the bits are the module's)."""
    import torch

    return torch._weight_norm(as_torch(direction), as_torch(magnitude), dim)


def layers_from_module(model: nn.Module, weights: Mapping[str, Tensor] | None = None,
                       select: Selector | None = None) -> LayerList:
    """The analysed weights of a module tree (module docstring), in registration (depth) order.

    With ``weights`` (parameter name -> tensor, e.g. a checkpoint read lazily from safetensors
    shards) the module tree only says what each weight is: it may live on the ``meta`` device,
    and every value is read from ``weights`` when it is hashed or written, one at a time.
    A checkpoint's weights that no parameter of the tree is read from (unclaimed_weights) are
    typed by name and rank and placed after the tree's layer they share the longest module path
    with (with_unclaimed). ``select`` (see _build) leaves layers out by name, type or size.
    """
    module_found = _module_found(model, weights)
    found = [(item.key, item.kind, identity, shape, make) for item, identity, shape, make in module_found]
    if isinstance(weights, RenamedTensors):
        found = with_unclaimed(found, [weights.names[item.parameter] for item, *_ in module_found], weights)
    return _build(found, select)


def unclaimed_weights(weights: RenamedTensors) -> list[str]:
    """The keys of a checkpoint's weights (what state_dict_type types) that no parameter of a
    module tree is read from, in natural order.

    A checkpoint is not always in the layout of the classes that load it: transformers 5 fuses the
    experts of a mixture-of-experts block into 3-D parameters and converts the per-expert
    ``experts.{e}.w1.weight`` tensors of Mixtral, Qwen-MoE, DeepSeek or OLMoE checkpoints on
    load, so its tree claims none of them; a checkpoint saved with a head may be typed by a
    tree without it. Left out, these would be most of an MoE model's weights. A tied weight kept
    under each of its names (T5's shared, encoder and decoder embeddings in a PyTorch file) is
    claimed under all of them (RenamedTensors.covered).
    """
    store = weights.store
    return sorted((key for key in store if key not in weights.covered and is_layer_weight(key, tensor_info(store, key))),
                  key=natural_key)


def with_unclaimed(found: list, checkpoint_keys: list[str], weights: RenamedTensors) -> list:
    """``found`` (a tree's (key, type, identity, shape, maker), in depth order; ``checkpoint_keys``:
    the checkpoint tensor each is read from) with the unclaimed weights of the checkpoint
    (unclaimed_weights), each after the last entry whose checkpoint name shares the most
    leading path components with its own (an expert of block 3 after block 3's attention), in
    natural order among those placed at the same entry; with none in common, at the end."""
    store = weights.store
    last_with_prefix: dict[tuple[str, ...], int] = {}
    for index, key in enumerate(checkpoint_keys):
        parts = tuple(key.split("."))
        for length in range(len(parts) + 1):
            last_with_prefix[parts[:length]] = index
    after: dict[int, list] = {}
    for key in unclaimed_weights(weights):
        parts = tuple(key.split("."))
        anchor = next(last_with_prefix[parts[:length]] for length in range(len(parts), -1, -1)
                      if parts[:length] in last_with_prefix) if found else -1
        after.setdefault(anchor, []).extend(name_typed(key, tensor_info(store, key), lambda k=key: store[k]))
    merged = list(after.get(-1, []))
    for index, entry in enumerate(found):
        merged += [entry, *after.get(index, [])]
    return merged


@dataclass(frozen=True)
class ModuleLayer:
    """An analysed layer of a module tree without its values: its name (``Layer.name``, as in
    layers.json) and how its matrix is taken from a parameter of the tree (its ModuleWeight)."""

    name: str
    weight: ModuleWeight


def module_layers(model: nn.Module) -> list[ModuleLayer]:
    """The layers :func:`layers_from_module` lists, in its order and under its names, each with
    the parameter its matrix comes from; nothing is hashed or copied (the stages that run the
    module, e.g. the Jacobian's, differentiate with respect to these)."""
    found = _module_found(model, None)
    names = _names([(item.key, identity) for item, identity, _, _ in found])
    return [ModuleLayer(name, item) for name, (item, *_) in zip(names, found) if name is not None]


def _module_found(model: nn.Module, weights: Mapping[str, Tensor] | None) -> list[tuple[ModuleWeight, object, tuple, Callable]]:
    """(ModuleWeight, identity, shape, maker) of every analysed weight of the tree, in depth order; a
    tied weight appears once per module that holds it, with the same identity (``_build``)."""
    found = []
    for item, parameter in tree_weights(model):  # the weights are torch tensors, or read as such
        if weights is not None and item.optional and item.parameter not in weights:
            continue  # a checkpoint in the per-expert layout: its experts are unclaimed weights
        matrix = item.matrix(parameter)  # a view (of a meta tensor, with weights): its shape
        if weights is None:
            found.append((item, storage_key(matrix), tuple(matrix.shape), lambda m=matrix.detach(): m))
        else:  # tied parameters are one object however they are reached
            identity = (id(parameter), item.part, item.expert, item.transpose)
            found.append((item, identity, tuple(matrix.shape), lambda i=item: i.matrix(i.value(weights))))
    return found


def tree_weights(model: nn.Module) -> Iterator[tuple[ModuleWeight, Tensor]]:
    """module_weights of every module of the tree, in module (depth) order."""
    for path, module in model.named_modules():
        yield from module_weights(path, module)


def module_weights(path: str, module: nn.Module) -> list[tuple[ModuleWeight, Tensor]]:
    """The analysed weights of one module (not its children), each with its parameter; [] if none."""
    from torch import Tensor, nn

    prefix = f"{path}." if path else ""
    if isinstance(module, nn.MultiheadAttention):
        return attention_projections(prefix, module)
    if is_transposed_conv1d(module):
        return [(ModuleWeight(f"{prefix}weight", "Linear", f"{prefix}weight", transpose=True), module.weight)]
    kind = module_type(module)
    if kind is None and "Expert" in type(module).__name__ and not type(module).__name__.endswith("Router"):
        return expert_matrices(prefix, module)
    router = kind is None and type(module).__name__.endswith("Router")
    if router:
        kind = "Linear" if state_dict_type("weight", getattr(module, "weight", None)) == "Linear" else None
    weight = getattr(module, "weight", None) if kind else None
    if not isinstance(weight, Tensor):
        return []
    if (norm_dim := weight_norm_dim(module)) is not None:
        direction, magnitude = (f"{prefix}{suffix.lstrip('.')}" for suffix in WEIGHT_NORM_SUFFIXES[0])
        return [(ModuleWeight(f"{prefix}weight", kind, direction, norm=magnitude, norm_dim=norm_dim), weight)]
    return [(ModuleWeight(f"{prefix}weight", kind, f"{prefix}weight", optional=router), weight)]


def weight_norm_dim(module: nn.Module) -> int | None:
    """The axis torch's weight-norm parametrisation of ``module.weight`` keeps, as torch._weight_norm
    takes it (-1: one norm over the whole weight), when the weight is computed from
    ``parametrizations.weight.original0`` and ``original1`` (wav2vec2's, HuBERT's and WavLM's
    positional convolution); None when the weight is not so parametrised."""
    parametrizations = getattr(module, "parametrizations", None)
    chain = getattr(parametrizations, "weight", None) if parametrizations is not None else None
    if chain is None or len(chain) != 1 or type(chain[0]).__name__ != "_WeightNorm":
        return None
    return chain[0].dim


def expert_matrices(prefix: str, module: nn.Module) -> list[tuple[ModuleWeight, Tensor]]:
    """The matrices of a mixture-of-experts block whose experts are fused (a module class named for
    experts: transformers 5's ``MixtralExperts``, ``GptOssExperts``, ...: each projection one 3-D
    parameter, experts first; DBRX's ``DbrxExpertGLU``: each a matrix of the experts' row blocks,
    (experts x intermediate, hidden), its count an attribute, EXPERT_COUNTS):
    ``{path}.{projection}.{e}``, one Linear per expert, as stored ((out, in) or (in, out): the
    spectrum is the same). Its router (``...Router``, a bare ``weight``) is a Linear too."""
    count = next((value for name in EXPERT_COUNTS if isinstance(value := getattr(module, name, None), int)), 0)
    found = []
    for name, parameter in module.named_parameters(recurse=False):
        if not parameter.dtype.is_floating_point or name.endswith("bias"):
            continue
        experts = parameter.shape[0] if parameter.ndim == 3 else count if parameter.ndim == 2 and count > 1 and \
            parameter.shape[0] % count == 0 else 0
        found += [(ModuleWeight(f"{prefix}{name}.{e}.weight", "Linear", f"{prefix}{name}", expert=e, experts=experts,
                                optional=True), parameter) for e in range(experts)]
    return found


def attention_projections(prefix: str, module: nn.MultiheadAttention) -> list[tuple[ModuleWeight, Tensor]]:
    """The query, key and value projections of a MultiheadAttention, as three Linear weights."""
    if module.in_proj_weight is not None:
        return [
            (ModuleWeight(f"{prefix}{name}_proj.weight", "Linear", f"{prefix}in_proj_weight", part=i),
             module.in_proj_weight)
            for i, name in enumerate("qkv")
        ]
    return [
        (ModuleWeight(f"{prefix}{name}_proj.weight", "Linear", f"{prefix}{name}_proj_weight"),
         getattr(module, f"{name}_proj_weight"))
        for name in "qkv"
    ]


def is_transposed_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' ``Conv1D``, recognised without importing transformers."""
    return any(
        cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.")
        for cls in type(module).__mro__
    )


def layers_from_state_dict(state: Mapping[str, Tensor], select: Selector | None = None) -> LayerList:
    """The weights of a bare state dict, typed by name and rank, in natural key order.

    Natural order ("layer.2" before "layer.10") stands in for depth, because safetensors files
    do not keep the order tensors were registered in; using it for every file format makes the
    same weights give the same layer list whatever format they came in. A store with a
    ``describe`` method (TensorStore, an .npz file's) is typed from its headers and read one
    tensor at a time (TensorStore's docstring). ``select``: see _build.
    """
    lazy = hasattr(state, "describe")
    found = []
    for key in sorted(state, key=natural_key):
        value = state.describe(key) if lazy else state[key]
        maker = (lambda k=key: state[k]) if lazy else (lambda v=value: v.detach() if is_torch_tensor(v) else v)
        identity = None if lazy or not is_torch_tensor(value) else storage_key(value)
        if pair := weight_norm_pair(key, state):  # a weight-norm direction: the weight it makes
            magnitude, dim = pair
            weight = weight_norm_key(key)
            found.append((weight, state_dict_type(weight, value), ("key", key), tuple(describe_tensor(value).shape),
                          lambda k=key, g=magnitude, d=dim: weight_normed(state[k], state[g], d)))
            continue
        found += name_typed(key, value, maker, identity)
    return _build(found, select)


# A weight-norm parametrisation's (direction, magnitude) key suffixes: transformers 5's / torch's
# parametrizations, and the older torch.nn.utils.weight_norm's.
WEIGHT_NORM_SUFFIXES = ((".parametrizations.weight.original1", ".parametrizations.weight.original0"),
                        (".weight_v", ".weight_g"))


def weight_norm_key(direction: str) -> str:
    """The key of the weight a weight-norm direction ``{path}...original1``/``weight_v`` makes."""
    return next(f"{direction.removesuffix(v)}.weight" for v, _ in WEIGHT_NORM_SUFFIXES if direction.endswith(v))


def weight_norm_pair(key: str, tensors: Mapping[str, Any]) -> tuple[str, int] | None:
    """(magnitude key, the axis the norm keeps) when ``key`` is a weight-norm direction v whose
    magnitude g is in ``tensors``; None otherwise. Without a module the axis is read off g's shape:
    the one axis it keeps of v's (size > 1), or -1 (one norm over all of v) when g is a scalar."""
    for direction, magnitude in WEIGHT_NORM_SUFFIXES:
        if key.endswith(direction) and (partner := key.removesuffix(direction) + magnitude) in tensors:
            v, g = tensor_info(tensors, key), tensor_info(tensors, partner)
            if v.dtype not in FLOAT_DTYPES or len(v.shape) < 2 or len(g.shape) not in (0, len(v.shape)):
                return None
            if math.prod(g.shape) == 1:
                return partner, -1
            kept = [i for i, (a, b) in enumerate(zip(v.shape, g.shape)) if b == a and b > 1]
            others = all(b == 1 for i, b in enumerate(g.shape) if i not in kept)
            return (partner, kept[0]) if len(kept) == 1 and others else None
    return None


def name_typed(key: str, value: object, read: Callable[[], Any], identity: object = None) -> list[tuple]:
    """The (tensor key, type, identity, shape, maker) entries of one checkpoint tensor typed by
    its name and rank (``value``: the tensor or its TensorInfo; ``read`` makes it): none if it is
    no layer, one Linear per matrix of a tensor that holds several (split_layers: a view of the
    stored tensor each), else one of type state_dict_type. ``identity`` (what makes two entries
    one tied weight) defaults to the key."""
    identity = ("key", key) if identity is None else identity
    if parts := split_layers(key, value):
        return [(part, "Linear", (identity, position), shape, lambda index=index: read()[index])
                for position, (part, index, shape) in enumerate(parts)]
    kind = state_dict_type(key, value)
    return [(key, kind, identity, tuple(describe_tensor(value).shape), read)] if kind else []


def split_layers(key: str, value: object) -> list[tuple[str, Any, tuple]]:
    """(tensor key, index into the stored tensor, shape) of each layer name typing makes of a
    stored tensor that holds several matrices, named as a module tree names them; [] for any other.

    - stacked experts (stacked_experts): one per expert, ``{path}.{e}.weight``;
    - an nn.MultiheadAttention's fused ``in_proj_weight`` (3E, E): its query, key and value
      projections, ``{path}.q_proj.weight``, ``k_proj``, ``v_proj`` (its rows in thirds, as
      attention_projections does with the module); its separate ``q_proj_weight`` (other key and
      value sizes) is ``{path}.q_proj.weight`` whole."""
    if not isinstance(value, (TensorInfo, np.ndarray)) and not is_torch_tensor(value):
        return []
    info = describe_tensor(value)
    if count := stacked_experts(key, info):
        return [(f"{layer_name(key)}.{e}.weight", e, tuple(info.shape[1:])) for e in range(count)]
    if len(info.shape) != 2 or info.dtype not in FLOAT_DTYPES:
        return []
    path, _, name = key.rpartition(".")
    prefix = f"{path}." if path else ""
    if name == "in_proj_weight" and info.shape[0] % 3 == 0:
        rows = info.shape[0] // 3
        return [(f"{prefix}{n}_proj.weight", slice(i * rows, (i + 1) * rows), (rows, info.shape[1]))
                for i, n in enumerate("qkv")]
    if name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
        return [(f"{prefix}{name.removesuffix('_weight')}.weight", slice(None), tuple(info.shape))]
    return []


def split_parts(tensors: Mapping[str, Any]) -> dict[str, str]:
    """Tensor key of each layer name typing makes of a stored tensor under another key -> that
    tensor's key: the parts split_layers splits a tensor into, and the weight a weight-norm
    direction makes (weight_norm_pair). ``tensors``: key -> tensor, or a store with ``describe``."""
    found = {part: key for key in tensors for part, _, _ in split_layers(key, tensor_info(tensors, key))}
    found.update({weight_norm_key(key): key for key in tensors if weight_norm_pair(key, tensors)})
    return found


def is_layer_weight(key: str, value: object) -> bool:
    """Whether name_typed makes a layer of the tensor."""
    return bool(split_layers(key, value) or state_dict_type(key, value))


def stacked_experts(key: str, info: TensorInfo) -> int:
    """How many experts' matrices a checkpoint tensor stacks along its first axis, by its name and
    rank; 0 if it is not such a stack.

    A floating-point 3-D tensor (not a bias) with a path component naming a mixture of experts
    (EXPERTS_NAME: ``experts``, ``block_sparse_moe``) holds one matrix per expert, as gpt-oss's
    ``mlp.experts.gate_up_proj`` and Granite-MoE's ``block_sparse_moe.input_linear.weight`` do;
    without that name a 3-D weight is a Conv1d's."""
    if len(info.shape) != 3 or info.dtype not in FLOAT_DTYPES or key.endswith("bias"):
        return 0
    return info.shape[0] if any(EXPERTS_NAME.search(part) for part in key.split(".")[:-1]) else 0


def layers_from_format(weights, select: Selector | None = None) -> LayerList:
    """The layers a format reader found (zooscope.sources.formats.FormatWeights), in its depth
    order. Each is stored in model.safetensors under ``{layer name}.weight``; the reader already
    made every stored tensor one layer at most (a reused one is recorded as tied there), or
    one per expert (stacked experts). ``select``: see _build."""
    return _build([(f"{layer.name}.weight", layer.type, ("stored", layer.stored.name, layer.name), layer.shape,
                    layer.read) for layer in weights.layers], select)


def module_type(module: nn.Module) -> str | None:
    """The layer type name of ``module``, or None when its weights are not analysed.

    A class of torch.nn (or a subclass) is its type. A class outside torch.nn that holds its own
    ``weight`` is one of these layers when its name says so and the weight has the type's rank
    (NAMED_TYPES): I-BERT's ``QuantLinear`` and ``QuantEmbedding`` keep float weights in classes
    of their own, which WeightWatcher analyses too (it matches class names)."""
    from torch import nn

    for name in MODULE_TYPES:
        if isinstance(module, getattr(nn, name)):
            return name
    weight = module._parameters.get("weight")  # its own: not a wrapped module's (PEFT's lora.Linear)
    if weight is None or not weight.dtype.is_floating_point:
        return None
    class_name = type(module).__name__.lower()
    return next((kind for word, kind, rank in NAMED_TYPES if word in class_name and weight.ndim == rank), None)


def state_dict_type(key: str, value: object) -> str | None:
    """The layer type of a state-dict entry from its name and rank, or None if not a layer.

    Only floating-point tensors named ``...weight`` of rank 2-4 are layers: 1-D/0-D tensors are
    biases and norms, integer tensors are buffers (counters, index tables). ``value`` is a torch
    tensor, a numpy array or a TensorInfo.
    """
    if not isinstance(value, (TensorInfo, np.ndarray)) and not is_torch_tensor(value):
        return None
    info = describe_tensor(value)
    floating, rank = info.dtype in FLOAT_DTYPES, len(info.shape)
    if not (floating and key.endswith("weight")):
        return None
    kind = RANK_TYPES.get(rank)
    if kind == "Linear" and "embed" in key.lower():
        return "Embedding"
    return kind


def layer_name(tensor_key: str) -> str:
    """The module path of a weight key ("net.0.weight" -> "net.0"); the key itself if no path."""
    return tensor_key.removesuffix(".weight") or tensor_key


def natural_key(text: str) -> list:
    """Sort key that orders embedded integers numerically: "h.2" < "h.10"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


# select(name, type, shape) -> None to analyse the layer, or (reason, detail) to leave it out.
Selector = Callable[[str, str, tuple], "tuple[str, str] | None"]


def _build(found: list[tuple[str, str, object, tuple, Callable[[], Tensor]]],
           select: Selector | None = None) -> LayerList:
    """Drop repeated (tied) tensors and those ``select`` leaves out, name the rest uniquely and
    hash their float32 bytes.

    ``found`` holds (tensor key, type, identity, shape, maker) in depth order (:func:`_names`:
    names are given before the selection, so a layer's name does not depend on it). Each
    float32 copy is made, hashed and let go; the list's tensors are made again when written, in
    their stored dtype, so no two weights are in memory at once beyond what the makers hold (a
    module tree, or nothing for a TensorStore). A layer left out is not read at all. Depths count
    the analysed layers.
    """
    layers: list[Layer] = []
    makers: dict[str, Callable[[], Tensor]] = {}
    tied: dict[str, str] = {}
    left_out: dict[str, tuple[str, str]] = {}
    dtypes: dict[str, str] = {}
    first: dict[object, str] = {}
    names = _names([(key, identity) for key, _, identity, _, _ in found])
    for name, (key, kind, identity, shape, make) in zip(names, found):
        if name is None:
            tied[key] = first[identity]
            continue
        first[identity] = key
        dropped = select(name, kind, tuple(shape)) if select else None
        if dropped:
            left_out[key] = dropped
            continue
        stored = make()
        dtypes[key] = describe_tensor(stored).dtype
        # hashed as its float32 widening, block by block (tensor_sha256): never widened whole
        layers.append(Layer(name, key, kind, list(stored.shape), len(layers), tensor_sha256(stored)))
        makers[key] = make
        del stored
    return LayerList(layers, LazyTensors(makers), tied, left_out, dtypes)


def _names(found: list[tuple[str, object]]) -> list[str | None]:
    """The layer name of each (tensor key, identity) in depth order: its file-safe module path,
    made unique; None for a tensor whose identity was seen before (a tied one, counted once).
    The one place layer names are made, for layers.json and for the stages that run a module."""
    seen: set = set()
    taken: set[str] = set()
    names: list[str | None] = []
    for key, identity in found:
        if identity in seen:
            names.append(None)
            continue
        seen.add(identity)
        names.append(_unique(safe_filename(layer_name(key)), taken))
    return names


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... when sanitising made two names collide."""
    candidate, counter = name, 1
    while candidate.lower() in taken:
        counter += 1
        candidate = f"{name}_{counter}"
    taken.add(candidate.lower())
    return candidate
