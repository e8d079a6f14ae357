"""The ``fetch`` stage: turn one zoo-sheet row into the workflow's common model form.

Whatever a model's source (a weights file, a demo architecture trained here, a random
initialisation), ``fetch_model`` writes the same three files into ``resources/models/{model}/``:
``model.safetensors`` (the analysed weights, float32), ``layers.json`` and ``meta.json``, so the
later stages need no model library. This is the only stage that imports one (torch), and only
where it needs it: a safetensors ``file:`` source is typed from its header and copied through
numpy, so its fetch job spends no start-up on torch.

Weights files are read without ever running code from them: safetensors, or PyTorch files
through ``torch.load(..., weights_only=True)`` only. A pickle that needs more is refused.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import numbers
import os
import pickle
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from zooscope.config import is_adapter_source
from zooscope.io import SafetensorsReader, atomic_path, read_json, write_json
from zooscope.layers import (
    LayerList,
    TensorStore,
    float32_bytes,
    is_torch_tensor,
    layers_from_module,
    layers_from_state_dict,
    num_parameters,
    safetensors_dtypes,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

    from zooscope.models.digits import TrainingConfig

log = logging.getLogger(__name__)

# Source kinds and how each is written in a zoo sheet.
SOURCE_KINDS: dict[str, str] = {
    "file": "file:PATH", "train": "train:ARCH", "random": "random:ARCH", "peft": "peft:PATH",
    "torchvision": "torchvision:NAME[@WEIGHTS]", "timm": "timm:NAME", "hf": "hf:REPO[@REVISION]",
}
# What a source's argument may be. Hub names are restricted so that a sheet cannot smuggle a
# path or URL into a library call; schemas/zoo.schema.yaml's source pattern says the same.
_HF_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_]|[.-](?![.-]))*"
# A revision (branch, tag, commit, refs/pr/N) names a file under the hub cache's refs/, so it may
# have folders but no '..' or '//'.
_HF_REVISION = r"[A-Za-z0-9](?:[A-Za-z0-9_]|[./-](?![./-]))*"
SOURCE_ARGUMENTS: dict[str, re.Pattern] = {
    "file": re.compile(r".+"),
    "train": re.compile(r".+"),
    "random": re.compile(r".+"),
    "peft": re.compile(r".+"),
    "torchvision": re.compile(r"[a-z][a-z0-9_]*(@[A-Z][A-Z0-9_]*)?"),
    "timm": re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)?"),
    "hf": re.compile(rf"{_HF_NAME}(/{_HF_NAME})?(@{_HF_REVISION})?"),
}
# Sources loaded through a model library's hub code (zooscope.sources.hubs).
HUB_KINDS = ("torchvision", "timm", "hf")
# Zoo-sheet columns that are not options (``base``: docs/finetunes.md).
SHEET_COLUMNS = ("model", "series", "source", "accuracy", "base")
# Columns of the Jacobian stage (zooscope.jacobian.data): they name data, not options of the model, so
# fetch ignores them (and a change to them must not refetch or retrain the model).
DATA_COLUMNS = ("data", "data_samples")
TRAINING_OPTION_TYPES: dict[str, type] = {
    "label_noise": float, "epochs": int, "lr": float, "batch_size": int, "seed": int,
}


@functools.cache
def architecture_option_types() -> dict[str, type]:
    """The architectures' option columns (zooscope.models.architectures; imports torch)."""
    from zooscope.models import architectures

    return {name: int for name in architectures.ARCHITECTURE_OPTIONS}


def option_types() -> dict[str, type]:
    """Every option column and its type: the architectures', then training's."""
    return {**architecture_option_types(), **TRAINING_OPTION_TYPES}


def source_options(kind: str) -> tuple[str, ...]:
    """The option columns that apply to a source kind. A random: model is not trained, so of the
    training options only the initialisation seed applies; file: and hub sources take none."""
    if kind == "train":
        return tuple(option_types())
    if kind == "random":
        return (*architecture_option_types(), "seed")
    return ()


MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

SOURCE_EXAMPLES = {
    "file": "file:weights/model.safetensors", "train": "train:mlp", "random": "random:cnn",
    "peft": "peft:adapters/my-lora",
    "torchvision": "torchvision:resnet50@IMAGENET1K_V1", "timm": "timm:resnet50.a1_in1k",
    "hf": "hf:openai-community/gpt2@main",
}

OUTPUT_FILES = ("model.safetensors", "layers.json", "meta.json")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Keys under which training scripts commonly nest the state dict in a checkpoint.
CHECKPOINT_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
# Where a model directory keeps its weights, most preferred first: (format, index, single file).
DIRECTORY_LAYOUTS = (
    ("safetensors", "model.safetensors.index.json", "model.safetensors"),
    ("torch", "pytorch_model.bin.index.json", "pytorch_model.bin"),
)
CONVERT_HINT = (
    "convert it to safetensors where you trust it, e.g. "
    "safetensors.torch.save_file(model.state_dict(), 'model.safetensors'), "
    "and point the zoo sheet's source at that file"
)


class FetchError(ValueError):
    """A zoo-sheet row that cannot be fetched; the message names the model and what to fix."""


@dataclass
class Fetched:
    """A model in the common form, before it is written: weights plus what meta.json records."""

    layers: LayerList
    num_params: int
    accuracy: float | None
    accuracy_source: str | None
    options: dict[str, Any] = field(default_factory=dict)
    extra_meta: dict[str, Any] = field(default_factory=dict)
    # The rest of a train:/random: module's state (biases, norms, buffers), stored after the
    # analysed weights so that the Jacobian stage runs the fetched model instead of retraining it.
    other_tensors: dict[str, Tensor] = field(default_factory=dict)


# ----------------------------------------------------------------------------- sheet rows


def parse_source(text: str, model: str | None = None) -> tuple[str, str]:
    """Split a sheet's ``source`` cell into (kind, argument), e.g. "train:mlp" -> ("train", "mlp").

    Hub arguments are checked against SOURCE_ARGUMENTS here too, for rows that did not come
    through the schema-validated sheet.
    """
    kind, sep, argument = str(text).strip().partition(":")
    where = f" for model {model!r}" if model is not None else ""
    if not sep or kind not in SOURCE_KINDS or not argument.strip():
        raise FetchError(
            f"unknown source {text!r}{where}; valid sources: {', '.join(SOURCE_KINDS.values())}"
        )
    argument = argument.strip()
    if not SOURCE_ARGUMENTS[kind].fullmatch(argument):
        raise FetchError(f"invalid source {text!r}{where}; expected {SOURCE_KINDS[kind]}, e.g. {SOURCE_EXAMPLES[kind]}")
    return kind, argument


def parse_options(row: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The row's non-empty option columns, typed; unknown or inapplicable ones are errors.

    ``file:`` rows ignore options: the weights are given, nothing is built or trained.
    """
    model = row.get("model")
    options = {}
    for column, value in row.items():
        if column in SHEET_COLUMNS or column in DATA_COLUMNS or is_empty(value) or kind in ("file", "peft"):
            continue
        types = option_types()
        if column not in types:
            raise FetchError(
                f"model {model!r}: unknown option column {column!r}; "
                f"valid option columns: {', '.join(types)}"
            )
        if column not in source_options(kind):
            raise FetchError(
                f"model {model!r}: option column {column!r} does not apply to {kind}: sources; "
                f"valid there: {', '.join(source_options(kind))}"
            )
        options[column] = convert(value, types[column], model, column)
    return options


def is_empty(value: Any) -> bool:
    """Whether a sheet cell is unset: None, blank text, or NaN/NA (pandas' empty cells)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return math.isnan(float(value))
    return type(value).__name__ in ("NAType", "NaTType")


def convert(value: Any, kind: type, model: Any, column: str) -> int | float:
    """A cell as ``int`` or finite ``float``; "64", 64 and 64.0 (pandas) are all the integer 64."""
    number: float | None = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or (kind is int and not number.is_integer()):
        raise FetchError(
            f"model {model!r}: column {column!r} must be {'an integer' if kind is int else 'a number'}, "
            f"got {value!r}"
        )
    return int(number) if kind is int else number


def sheet_accuracy(row: Mapping[str, Any]) -> float | None:
    """The sheet's reported top-1 accuracy in percent, or None when the cell is empty."""
    value = row.get("accuracy")
    if is_empty(value):
        return None
    accuracy = convert(value, float, row.get("model"), "accuracy")
    if not 0.0 <= accuracy <= 100.0:
        raise FetchError(
            f"model {row.get('model')!r}: column 'accuracy' must be a percentage in [0, 100], "
            f"got {value!r}"
        )
    return accuracy


def model_id(row: Mapping[str, Any]) -> str:
    """The row's model id, checked: it becomes a directory name in every later stage."""
    model = row.get("model")
    if not isinstance(model, str) or not MODEL_ID.fullmatch(model):
        raise FetchError(
            f"invalid model id {model!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return model


# ----------------------------------------------------------------------------- fetch


def fetch_model(
    row: Mapping[str, Any], out_dir: str | os.PathLike, *, sheet_dir: str | os.PathLike, threads: int = 1,
    base_dir: str | os.PathLike | None = None,
) -> None:
    """Fetch one zoo-sheet row into ``out_dir``: model.safetensors, layers.json, meta.json.

    ``row`` holds ``model``, ``series``, ``source``, ``accuracy`` and option columns as read
    from the sheet; relative ``file:`` and ``peft:`` paths are resolved against ``sheet_dir``. A
    ``peft:`` adapter is merged into its base, fetched into ``base_dir`` (zooscope.sources.peft).
    Every file is written atomically and deterministically (no timings: reruns give identical bytes).
    """
    model = model_id(row)
    kind, argument = parse_source(row.get("source", ""), model)
    options = parse_options(row, kind)
    accuracy = sheet_accuracy(row)
    start = time.perf_counter()
    if kind == "file" and not is_adapter_source(row["source"], sheet_dir):
        fetched = fetch_file(model, resolve_path(argument, sheet_dir), accuracy)
    elif kind in ("file", "peft"):  # a LoRA adapter: a peft: source or a file: adapter folder
        from zooscope.sources.peft import AdapterError, fetch_adapter

        if base_dir is None:
            raise FetchError(f"model {model!r}: an adapter (peft: source) needs its base model in the column 'base'")
        try:
            fetched = fetch_adapter(model, resolve_path(argument, sheet_dir), accuracy, Path(base_dir))
        except AdapterError as error:
            raise FetchError(str(error)) from None
    elif kind == "train":
        fetched = fetch_trained(model, argument, options, accuracy, threads)
    elif kind == "random":
        fetched = fetch_random(model, argument, options, accuracy, threads)
    else:
        fetched = fetch_hub(model, kind, argument, accuracy, threads)
    write_model(out_dir, _meta(row, model, fetched), fetched.layers, fetched.other_tensors)
    log.info(
        "fetched %s (%s) in %.1f s: %d layers, %d parameters, accuracy %s",
        model, row["source"], time.perf_counter() - start, len(fetched.layers.layers),
        fetched.num_params, fetched.accuracy,
    )


def _meta(row: Mapping[str, Any], model: str, fetched: Fetched) -> dict[str, Any]:
    """meta.json's content except the weights' sha256, which is known once they are serialised."""
    return {
        "model": model,
        "series": None if is_empty(row.get("series")) else str(row["series"]),
        "source": str(row["source"]).strip(),
        "accuracy": fetched.accuracy,
        "accuracy_source": fetched.accuracy_source,
        "num_params": fetched.num_params,
        "options": fetched.options,
        **fetched.extra_meta,
    }


def write_model(
    out_dir: str | os.PathLike, meta: dict[str, Any], layers: LayerList,
    other_tensors: Mapping[str, Tensor] | None = None,
) -> None:
    """Write the three fetch outputs atomically; meta.json last, with the weights' sha256."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "model.safetensors") as tmp:
        digest = write_safetensors(tmp, layers, other_tensors or {})
    write_json(
        out_dir / "layers.json",
        {"model": meta["model"], "layers": [layer.to_json() for layer in layers.layers]},
    )
    write_json(out_dir / "meta.json", {**meta, "sha256": digest})


def write_safetensors(path: Path, layers: LayerList, other_tensors: Mapping[str, Tensor] | None = None) -> str:
    """Write the layers' float32 weights as a safetensors file, one tensor at a time; its sha256.

    ``other_tensors`` (a module's biases, norms and buffers) follow in name order, in their own
    dtype. Streaming (header, then each tensor's bytes in depth order) instead of serialising the
    whole file in memory keeps fetch's memory at the model plus one tensor, whatever the model's
    size. The header is computed from the tensor list, so the bytes are deterministic.
    """
    # (name, safetensors dtype, shape, bytes, its bytes when asked): weights first, in depth order
    entries = [(layer.tensor, "F32", list(layer.shape), 4 * math.prod(layer.shape),
                lambda key=layer.tensor: float32_bytes(layers.tensors[key])) for layer in layers.layers]
    if other_tensors:  # a module's state: torch tensors
        dtype_names = {dtype: name for name, dtype in safetensors_dtypes().items()}
        entries += [(name, dtype_names[value.dtype], list(value.shape), value.element_size() * value.numel(),
                     lambda value=value: _torch_bytes(value))
                    for name, value in sorted(other_tensors.items())]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, size, _ in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for chunk in (len(encoded).to_bytes(8, "little"), encoded):
            handle.write(chunk)
            digest.update(chunk)
        for *_, make in entries:
            data = make()
            handle.write(data)
            digest.update(data)
            del data
    return digest.hexdigest()


def _torch_bytes(tensor: Tensor) -> memoryview:
    import torch

    return memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).cast("B")


def fetch_trained(
    model: str, arch: str, options: dict[str, Any], accuracy: float | None, threads: int
) -> Fetched:
    """Build ``arch`` and train it on digits; its accuracy is the measured test accuracy."""
    from zooscope.models import architectures
    from zooscope.models import digits

    if accuracy is not None:
        log.warning(
            "model %s: ignoring the sheet's accuracy %s: a train: model's accuracy is measured",
            model, accuracy,
        )
    arch_options, config = _training_setup(model, arch, options)
    with digits.deterministic_torch(config.seed, threads):
        network = architectures.build_architecture(arch, arch_options)
    result = digits.train(network, config, threads=threads)
    layers = layers_from_module(network)
    return Fetched(
        layers=layers,
        other_tensors=unanalysed_state(network, layers),
        num_params=_module_parameters(network),
        accuracy=result.test_accuracy,
        accuracy_source=_measured_source(),
        options=options,
        extra_meta={
            "architecture": {"name": arch, "options": arch_options},
            "training": result.to_meta(),
        },
    )


def fetch_random(
    model: str, arch: str, options: dict[str, Any], accuracy: float | None, threads: int
) -> Fetched:
    """Build ``arch`` at a seeded random initialisation: the untrained null baseline.

    Its accuracy is the sheet's if given, else measured on the digits test split (about chance).
    """
    from zooscope.models import architectures
    from zooscope.models import digits

    arch_options = _architecture_options(model, arch, options)
    seed = options.get("seed", 0)
    with digits.deterministic_torch(seed, threads):
        network = architectures.build_architecture(arch, arch_options)
        measured = digits.held_out_accuracy(network) if accuracy is None else None
    layers = layers_from_module(network)
    return Fetched(
        layers=layers,
        other_tensors=unanalysed_state(network, layers),
        num_params=_module_parameters(network),
        accuracy=accuracy if accuracy is not None else measured,
        accuracy_source="zoo sheet" if accuracy is not None else _measured_source(),
        options=options,
        extra_meta={"architecture": {"name": arch, "options": arch_options}, "init_seed": seed},
    )


def fetch_hub(model: str, kind: str, argument: str, accuracy: float | None, threads: int) -> Fetched:
    """Load a torchvision/timm/Hugging Face model; layers are typed from its module tree.

    The sheet's accuracy wins; else the one the weights report (torchvision's meta), else none.
    meta.json's ``weights`` records where the weights came from (zooscope.sources.hubs).
    """
    from zooscope.models import digits
    from zooscope.sources import hubs

    with digits.deterministic_torch(0, threads):
        loaded = hubs.load_hub_model(kind, argument, model)
        layers = layers_from_module(loaded.module, loaded.weights)
    if accuracy is None and loaded.accuracy is None:
        log.warning("model %s: no accuracy in the zoo sheet and none reported by %s:%s", model, kind, argument)
    return Fetched(
        layers=layers,
        num_params=_module_parameters(loaded.module),
        accuracy=accuracy if accuracy is not None else loaded.accuracy,
        accuracy_source="zoo sheet" if accuracy is not None else loaded.accuracy_source,
        extra_meta={"weights": loaded.provenance},
    )


def fetch_file(model: str, path: Path, accuracy: float | None) -> Fetched:
    """Read a weights file or model directory; layers are typed by tensor name and rank."""
    state, file_format = load_state_dict(path, model)
    layers = layers_from_state_dict(state)
    if not layers.layers:
        log.warning("model %s: no analysable weight tensors in %s", model, path)
    return Fetched(
        layers=layers,
        num_params=state.num_parameters() if isinstance(state, TensorStore) else num_parameters(state.values()),
        accuracy=accuracy,
        accuracy_source="zoo sheet" if accuracy is not None else None,
        extra_meta={"file_format": file_format},
    )


def _architecture_options(model: str, arch: str, options: Mapping[str, Any]) -> dict[str, int]:
    """The architecture's full options, with its errors re-raised naming the model."""
    from zooscope.models import architectures

    given = {key: value for key, value in options.items() if key in architecture_option_types()}
    try:
        return architectures.architecture_options(arch, given)
    except ValueError as error:
        raise FetchError(f"model {model!r}: {error}") from None


def _training_setup(
    model: str, arch: str, options: Mapping[str, Any]
) -> tuple[dict[str, int], TrainingConfig]:
    """Architecture options and the training config: the architecture's defaults plus the row's."""
    from zooscope.models import digits

    arch_options = _architecture_options(model, arch, options)
    given = {key: value for key, value in options.items() if key in TRAINING_OPTION_TYPES}
    config = dataclasses.replace(digits.TRAINING_DEFAULTS[arch], **given)
    if not 0.0 <= config.label_noise <= 1.0:
        raise FetchError(f"model {model!r}: column 'label_noise' must be in [0, 1], got {config.label_noise}")
    for name in ("epochs", "batch_size", "lr"):
        if not getattr(config, name) > 0:
            raise FetchError(f"model {model!r}: column {name!r} must be positive, got {getattr(config, name)}")
    return arch_options, config


def unanalysed_state(network: nn.Module, layers: LayerList) -> dict[str, Tensor]:
    """The entries of the module's state dict that are not analysed weights (biases, norms, buffers)."""
    analysed = {layer.tensor for layer in layers.layers}
    return {key: value for key, value in network.state_dict().items() if key not in analysed}


def _module_parameters(network: nn.Module) -> int:
    """All parameters of a module tree (shared ones once)."""
    return num_parameters(network.parameters())


def _measured_source() -> str:
    from zooscope.models import digits

    return f"measured: digits test split ({len(digits.load_digits_split().y_test)} samples)"


# ----------------------------------------------------------------------------- weights files


def resolve_path(argument: str, sheet_dir: str | os.PathLike) -> Path:
    """A ``file:`` path; a relative one is relative to the zoo sheet, not the working directory."""
    path = Path(argument).expanduser()
    return path if path.is_absolute() else Path(sheet_dir) / path


def load_state_dict(path: Path, model: str) -> tuple[Mapping[str, Tensor], str]:
    """All tensors of a weights file or model directory, and its format ("safetensors"/"torch").

    safetensors come as a TensorStore that reads one tensor at a time (bounded memory: a model
    is never whole in memory); a pickle cannot be read in part, so torch files are read whole.
    """
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


def shard_files(index: Path, model: str) -> list[Path]:
    """The shard files an ``*.index.json`` names in its weight_map, each inside its folder."""
    try:
        weight_map = read_json(index)["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise FetchError(f"model {model!r}: cannot read shard index {index}: {error!r}") from None
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
