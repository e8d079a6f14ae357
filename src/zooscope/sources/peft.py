"""``peft:PATH``: a LoRA adapter (a PEFT folder: ``adapter_config.json`` + ``adapter_model.safetensors``) as a model.

PATH is relative to the zoo sheet's folder; a ``file:`` folder holding an adapter_config.json is
read as this kind too (``claims``). A ``peft:PATH`` row with a ``base`` is fetched as its base with the adapter merged in, W_base + dW for
every adapted layer (the model that ``peft``'s ``merge_and_unload`` gives), so the merged layers are
analysed like any layer. Each adapted layer's update dW = s B A (B: out x r, A: r x in; s =
lora_alpha / r, or lora_alpha / sqrt(r) with ``use_rslora``; ``alpha_pattern`` overrides lora_alpha per
module and r is the stored factors' rank, so ``rank_pattern`` needs nothing) is also stored as its two
factors, in the layer's (out, in) layout, ``dW = scale * left @ right``: the esd stage takes their
low-rank route (zooscope.spectra.delta) instead of the N x M matrix. Embedding adapters
(lora_embedding_A, r x num; lora_embedding_B, dim x r: dW = s (B A)^T) are stored the same way;
Conv1d/Conv2d adapters are merged, and their (small) kernel updates analysed densely. Layers that
the adapter trains whole (``modules_to_save``) replace the base's. Nothing in the folder is run: the
config is JSON, the weights safetensors. Adapters that change more than W + s B A (DoRA, LoRA
biases, replicated layers, parameter targets, trainable tokens) are refused with the reason.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from zooscope.sources.base import FetchError, SourceKind

if TYPE_CHECKING:  # numpy where it is used: the Snakefile imports this module through the registry
    import numpy as np

    from zooscope.sources.base import Fetched
    from zooscope.zoo import ZooRow

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# How peft's saved keys begin (the PeftModel's wrapping of the base model).
KEY_PREFIX = "base_model.model."
_FACTOR = re.compile(r"(?P<module>.+)\.(?P<which>lora_A|lora_B)\.weight|(?P<emodule>.+)\.(?P<ewhich>lora_embedding_[AB])")
# Config fields whose non-default values make the update more than W + s B A.
UNSUPPORTED = {"use_dora": "DoRA (use_dora)", "lora_bias": "LoRA biases (lora_bias)",
               "layer_replication": "replicated layers (layer_replication)",
               "target_parameters": "parameter targets (target_parameters)",
               "trainable_token_indices": "trainable tokens (trainable_token_indices)"}
# Where a fetched adapter model keeps a layer's factors in its model.safetensors.
FACTOR_KEY = "adapter/{tensor}/{side}"


class AdapterError(FetchError):
    """An adapter folder that cannot be read or does not fit its base; the message names the model."""


@dataclass(frozen=True)
class LoraUpdate:
    """One adapted module: dW = scale * left @ right (2-D layers), or its dense kernel (``dense``,
    for Conv1d/Conv2d), in the base tensor's layout."""

    tensor: str
    scale: float
    rank: int
    left: np.ndarray | None = None
    right: np.ndarray | None = None
    dense: np.ndarray | None = None

    def delta(self) -> np.ndarray:
        """The dense update in float64 (for merging: the base layer is N x M anyway)."""
        import numpy as np

        if self.dense is not None:
            return self.dense
        return self.scale * (self.left.astype(np.float64) @ self.right.astype(np.float64))


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter as read from its folder: its updates by base tensor key, the tensors it
    replaces whole (``modules_to_save``: key -> array) and its config's summary for meta.json."""

    updates: dict[str, LoraUpdate]
    replaced: dict[str, np.ndarray]
    config: dict[str, Any]


def adapter_scale(lora_alpha: float, rank: int, use_rslora: bool = False) -> float:
    """s of dW = s B A: lora_alpha / r, or lora_alpha / sqrt(r) (rank-stabilised LoRA, Kalajdzievski 2023)."""
    return lora_alpha / math.sqrt(rank) if use_rslora else lora_alpha / rank


def module_alpha(config: Mapping[str, Any], module: str) -> float:
    """lora_alpha of one module: the first ``alpha_pattern`` key that ends the module's path (peft's
    rule: the key as a regular expression, after a '.' or at the start), else ``lora_alpha``."""
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return float(alpha)
    return float(config["lora_alpha"])


def read_adapter(folder: str | Path, model: str) -> Adapter:
    """Read a PEFT LoRA folder; raise AdapterError naming the model for anything unsupported."""
    import json

    from safetensors.numpy import load_file

    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise AdapterError(f"model {model!r}: {folder} is no PEFT adapter folder: {name} is missing "
                               f"(peft's save_pretrained writes {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / WEIGHTS_FILE))
    except Exception as error:  # corrupt JSON or safetensors
        raise AdapterError(f"model {model!r}: cannot read the adapter in {folder}: {error}") from None
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"model {model!r}: adapter {folder} is of type {config.get('peft_type')!r}; "
                           "zooscope reads LoRA adapters (peft_type LORA)")
    for field, what in UNSUPPORTED.items():
        if config.get(field):
            raise AdapterError(f"model {model!r}: adapter {folder} uses {what}, whose update is not W + s B A; "
                               "merge it with peft (merge_and_unload) and give the merged model as a file: source")
    factors: dict[str, dict[str, np.ndarray]] = {}
    replaced = {}
    for key, value in tensors.items():
        inner = key.removeprefix(KEY_PREFIX)
        match = _FACTOR.fullmatch(inner)
        if match:
            module = match["module"] or match["emodule"]
            factors.setdefault(module, {})[match["which"] or match["ewhich"]] = value
        elif "lora_" in inner:
            raise AdapterError(f"model {model!r}: adapter tensor {key!r} is of no LoRA kind zooscope knows")
        else:
            replaced[inner] = value
    updates = {}
    for module, pair in sorted(factors.items()):
        updates[f"{module}.weight"] = _update(module, pair, config, model)
    return Adapter(updates, replaced, {
        "folder": str(folder), "r": config.get("r"), "lora_alpha": config.get("lora_alpha"),
        "use_rslora": bool(config.get("use_rslora")), "target_modules": config.get("target_modules"),
        "modules_to_save": config.get("modules_to_save"), "base_model_name_or_path": config.get("base_model_name_or_path"),
    })


def _update(module: str, pair: Mapping[str, np.ndarray], config: Mapping[str, Any], model: str) -> LoraUpdate:
    import numpy as np

    tensor = f"{module}.weight"
    if "lora_embedding_A" in pair or "lora_embedding_B" in pair:
        a, b = pair.get("lora_embedding_A"), pair.get("lora_embedding_B")
        embedding = True
    else:
        a, b = pair.get("lora_A"), pair.get("lora_B")
        embedding = False
    if a is None or b is None:
        raise AdapterError(f"model {model!r}: adapter module {module!r} has only one of its two LoRA factors")
    rank = int(a.shape[0])
    if b.shape[1] != rank:
        raise AdapterError(f"model {model!r}: adapter module {module!r}: factors of ranks {rank} and {b.shape[1]}")
    scale = adapter_scale(module_alpha(config, module), rank, bool(config.get("use_rslora")))
    a, b = a.astype(np.float64), b.astype(np.float64)
    if embedding:  # dW (num, dim) = s (B A)^T = s A^T B^T
        return LoraUpdate(tensor, scale, rank, left=a.T, right=b.T)
    if a.ndim == 2:
        return LoraUpdate(tensor, scale, rank, left=b, right=a)
    # Conv1d/Conv2d: A is (r, in, *kernel), B (out, r, 1...): the kernel update sum_r B[o, r] A[r, i, ...]
    dense = scale * np.tensordot(b.reshape(b.shape[0], rank), a, axes=(1, 0))
    return LoraUpdate(tensor, scale, rank, dense=dense)


def oriented_update(update: LoraUpdate, base_shape: tuple[int, ...], model: str) -> LoraUpdate:
    """The update in the base layer's layout, or AdapterError when its shape does not fit.

    A 2-D update is (out, in), zooscope's layout of every linear map (transformers' Conv1D weights
    are transposed to it when fetched through their module, so ``fan_in_fan_out`` needs nothing); a
    base layer stored (in, out), a Conv1D read from a bare state dict, takes its transpose. A square
    layer is taken as (out, in).
    """
    shape = tuple(update.dense.shape) if update.dense is not None else (update.left.shape[0], update.right.shape[1])
    base_shape = tuple(base_shape)
    if shape == base_shape:
        return update
    if update.dense is None and shape[::-1] == base_shape:
        return LoraUpdate(update.tensor, update.scale, update.rank, left=update.right.T, right=update.left.T)
    raise AdapterError(f"model {model!r}: the adapter's update of {update.tensor!r} has shape {shape}, its base "
                       f"layer {base_shape}: the adapter was made for another base model; set the row's base to it")


def wrapper_prefix(keys: set[str], known: set[str]) -> str:
    """The leading module path (e.g. ``bert.``) that an adapter's keys have and its base's do not.

    An adapter made on a task model (``BertForSequenceClassification``: ``bert.encoder...``) adapts
    the backbone that a hub base loads bare (``AutoModel``: ``encoder...``). "" when the keys
    match as they are, or when no one prefix makes every adapted key a key of the base.
    """
    if not keys or keys <= known:
        return ""
    first = min(keys)
    parts = first.split(".")
    for cut in range(1, len(parts)):
        prefix = ".".join(parts[:cut]) + "."
        if all(key.startswith(prefix) for key in keys) and any(key[len(prefix):] in known for key in keys):
            return prefix
    return ""


def _relative_to(adapter: Adapter, prefix: str) -> Adapter:
    if not prefix:
        return adapter
    updates = {key[len(prefix):]: LoraUpdate(key[len(prefix):], u.scale, u.rank, u.left, u.right, u.dense)
               for key, u in adapter.updates.items()}
    # replaced tensors outside the backbone (a task head) stay as they are: the base has no such layer
    replaced = {key.removeprefix(prefix): value for key, value in adapter.replaced.items()}
    return Adapter(updates, replaced, {**adapter.config, "key_prefix": prefix})


def fetch_adapter(model: str, folder: Path, accuracy: float | None, base_dir: Path):
    """The ``Fetched`` model of an adapter: its base's fetched layers with the adapter merged in."""
    import numpy as np
    import torch

    from zooscope import io
    from zooscope.layers import LayerList, Layer
    from zooscope.tensors import LazyTensors, tensor_sha256
    from zooscope.sources.base import Fetched

    adapter = read_adapter(folder, model)
    base_doc = io.read_json(base_dir / "layers.json")
    reader = io.SafetensorsReader(base_dir / "model.safetensors")
    base_layers = base_doc["layers"]
    by_tensor = {layer["tensor"]: layer for layer in base_layers}
    adapter = _relative_to(adapter, wrapper_prefix(set(adapter.updates), set(by_tensor)))
    unknown = sorted(set(adapter.updates) - set(by_tensor))
    if unknown:
        raise AdapterError(f"model {model!r}: the adapter updates {', '.join(unknown[:3])}, which its base "
                           f"{base_doc.get('model')!r} has no layer of: the adapter was made for another base model")
    updates = {key: oriented_update(update, by_tensor[key]["shape"], model) for key, update in adapter.updates.items()}

    def make(layer):
        key = layer["tensor"]
        if key in adapter.replaced:
            return np.ascontiguousarray(adapter.replaced[key], dtype=np.float32)
        weight = reader.get_tensor(key)
        if key in updates:
            return (weight.astype(np.float64) + updates[key].delta()).astype(np.float32)
        return weight

    layers, makers, dtypes = [], {}, {}
    base_dtypes = {key: entry["dtype"] for key, entry in reader.header().items()}
    for layer in base_layers:
        value = make(layer)
        if tuple(value.shape) != tuple(layer["shape"]):
            raise AdapterError(f"model {model!r}: the adapter replaces {layer['tensor']!r} with shape "
                               f"{tuple(value.shape)}, its base has {tuple(layer['shape'])}")
        changed = layer["tensor"] in updates or layer["tensor"] in adapter.replaced
        layers.append(Layer(layer["name"], layer["tensor"], layer["type"], list(layer["shape"]), layer["depth"],
                            tensor_sha256(value) if changed else layer["sha256"]))
        makers[layer["tensor"]] = lambda layer=layer: make(layer)
        # a merged weight is float32; an unchanged one stays as its base stores it
        dtypes[layer["tensor"]] = "F32" if changed else base_dtypes[layer["tensor"]]
    # the base's other tensors (biases, norms), the adapter's whole replacements, and the factors
    analysed = set(by_tensor)
    other = {key: reader.get_tensor(key) for key in reader.header()
             if key not in analysed and not key.startswith("adapter/")}
    other.update({key: value for key, value in adapter.replaced.items() if key not in analysed})
    factors = {}
    for key, update in sorted(updates.items()):
        if update.left is None:
            continue
        names = {side: FACTOR_KEY.format(tensor=key, side=side) for side in ("left", "right")}
        other[names["left"]], other[names["right"]] = update.left.astype(np.float32), update.right.astype(np.float32)
        factors[key] = {**names, "scale": update.scale, "rank": update.rank}
    num_params = sum(math.prod(layer.shape) for layer in layers) + sum(
        int(np.size(value)) for key, value in other.items() if not key.startswith("adapter/")
        and np.asarray(value).dtype.kind == "f")
    return Fetched(
        layers=LayerList(layers, LazyTensors(makers), dtypes=dtypes),
        other_tensors={key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in other.items()},
        num_params=num_params,
        accuracy=accuracy,
        accuracy_source="zoo sheet" if accuracy is not None else None,
        extra_meta={"adapter": {**adapter.config, "base": base_doc.get("model"), "layers": factors,
                                "merged": sorted(updates), "replaced": sorted(adapter.replaced)}},
    )


def fetch(row: ZooRow, threads: int, base_dir: Path) -> Fetched:
    """The adapter of ``row`` merged onto its base, fetched into ``base_dir``."""
    return fetch_adapter(row.model, row.source.path, row.accuracy, Path(base_dir))


def is_adapter_folder(path: Path) -> bool:
    """Whether a path is a PEFT adapter folder (it holds an adapter_config.json)."""
    return (path / CONFIG_FILE).is_file()


# Option columns are ignored as for file:: the weights are given. The row needs a base (zooscope.zoo).
KIND = SourceKind(
    name="peft", syntax="peft:PATH", example="peft:adapters/my-lora", argument=r".+", fetch=fetch,
    ignores_options=True, local_path=True, local_files=(CONFIG_FILE, WEIGHTS_FILE), adapter=True,
    claims=is_adapter_folder,
)
