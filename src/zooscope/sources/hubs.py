"""Hub sources: pretrained models from torchvision, timm and the Hugging Face hub.

Each loader goes through its library's own loading code (so a model loads exactly as its
authors publish it, key remapping included) and returns the module tree, the accuracy the
weights report (torchvision only) and a provenance record for meta.json: the library, the
resolved weights name or revision, and the sha256 of every weights file read. A Hugging Face
model with safetensors is the exception to "loads": its tree is built on the meta device and its
weights are read from the checkpoint one at a time (load_hf), for models of any size.

Safety, enforced here for every hub path rather than trusted to each library's defaults:
- every ``torch.load`` made while a hub model loads is forced to ``weights_only=True``
  (torchvision's ``load_state_dict_from_url`` defaults to ``weights_only=False``);
- Hugging Face models are always loaded with ``trust_remote_code=False``.

Caches and offline use: ``TORCH_HOME`` (torchvision), ``HF_HOME``/``HF_HUB_CACHE`` (timm and
transformers) and ``HF_HUB_OFFLINE=1`` are read when a model is fetched, not when a library is
imported. Where a download is impossible the fetch fails at once with a FetchError naming the
model, the source, the cache file expected and how to supply the weights locally.

These libraries are imported lazily: only the fetch stage needs them.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
import pickle
import re
import socket
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

import torch
from torch import Tensor, nn

from zooscope.io import read_json
from zooscope.layers import LazyTensors, TensorStore, module_weights
from zooscope.sources import CONVERT_HINT, FetchError, load_state_dict, refusal_reason, shard_files

log = logging.getLogger(__name__)
Loaded = TypeVar("Loaded")

# Seconds a hub request may wait for the network before the fetch fails (no long retry loops).
NETWORK_TIMEOUT_S = 20
# Seconds the one reachability check of the Hugging Face hub may take (hf_hub_reachable).
CONNECT_TIMEOUT_S = 5
# Where a Hugging Face repo snapshot keeps its weights, most preferred first (index before single file).
HF_WEIGHT_FILES = (
    "model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin",
)
# Of these, the ones fetch converts tensor by tensor without loading the model (hf_checkpoint).
HF_SAFETENSORS = HF_WEIGHT_FILES[:2]
# A shard file named by a Hugging Face index: a plain file name in the repo's top folder.
SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors")
LOCAL_HINT = (
    "or save the weights where you have them as safetensors "
    "(safetensors.torch.save_file(model.state_dict(), PATH), or model.save_pretrained(FOLDER)) "
    "and use the source file:PATH in the zoo sheet"
)


@dataclass
class HubModel:
    """A loaded hub model: the module tree, the accuracy its weights report, and their provenance."""

    module: nn.Module
    # None: the module holds the weights; else parameter name -> tensor, read lazily (hf_checkpoint)
    weights: Mapping[str, Tensor] | None = None
    accuracy: float | None = None
    accuracy_source: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def load_hub_model(kind: str, argument: str, model: str) -> HubModel:
    """Load the hub source ``kind:argument`` of zoo-sheet model ``model``, safely (module docstring)."""
    loader = HUB_LOADERS[kind]
    with weights_only_torch_load(), hub_environment():
        return loader(argument, model)


# ----------------------------------------------------------------------------- torchvision


def load_torchvision(argument: str, model: str) -> HubModel:
    """``torchvision:NAME[@WEIGHTS]`` (WEIGHTS defaults to DEFAULT); accuracy from the weights' meta."""
    import torchvision

    name, _, weights_name = argument.partition("@")
    weights = torchvision_weights(name, weights_name or "DEFAULT", model)
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    source = f"torchvision:{argument}"
    cache_hint = f"download {weights.url} and put it into {checkpoint.parent}/ (set by TORCH_HOME)"
    if not checkpoint.is_file() and offline():
        raise download_error(model, source, f"offline (HF_HUB_OFFLINE set) and {checkpoint} is not cached", cache_hint)
    module = guarded_load(model, source, cache_hint, lambda: torchvision.models.get_model(name, weights=weights))
    acc1 = weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    return HubModel(
        module=module,
        accuracy=float(acc1) if acc1 is not None else None,
        accuracy_source=f"torchvision {type(weights).__name__}.{weights.name} meta: ImageNet-1K acc@1"
        if acc1 is not None else None,
        provenance={
            "library": "torchvision",
            "version": torchvision.__version__,
            "weights": f"{type(weights).__name__}.{weights.name}",
            "url": weights.url,
            "files": file_records([checkpoint]),
        },
    )


def torchvision_weights(name: str, weights_name: str, model: str):
    """The weights enum member for ``name@weights_name``; unknown names list the valid ones."""
    import torchvision

    if name not in torchvision.models.list_models():
        raise FetchError(
            f"model {model!r}: unknown torchvision model {name!r}"
            f"{did_you_mean(name, torchvision.models.list_models())}"
        )
    enum = torchvision.models.get_model_weights(name)
    try:
        return enum[weights_name]
    except KeyError:
        raise FetchError(
            f"model {model!r}: torchvision model {name!r} has no weights {weights_name!r}; "
            f"valid: {', '.join(enum.__members__)}"
        ) from None


# ----------------------------------------------------------------------------- timm


def load_timm(argument: str, model: str) -> HubModel:
    """``timm:NAME`` with its pretrained tag (e.g. resnet50.a1_in1k), via ``timm.create_model``."""
    import timm

    check_timm_name(argument, model)
    source = f"timm:{argument}"
    unreachable = hf_cache_only_unless_reachable()
    module = guarded_load(model, source, hf_cache_hint(f"timm/{argument}"),
                          lambda: timm.create_model(argument, pretrained=True, cache_dir=hf_cache_dir()),
                          context=unreachable)
    cfg = getattr(module, "pretrained_cfg", {}) or {}
    provenance = {"library": "timm", "version": timm.__version__, "pretrained": argument}
    if cfg.get("hf_hub_id"):
        repo, _, revision = cfg["hf_hub_id"].partition("@")
        provenance.update(hf_snapshot(repo, revision or None, model))
    elif cfg.get("url"):
        provenance["url"] = cfg["url"]
        provenance["files"] = file_records([Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg["url"])])
    return HubModel(module=module, provenance=provenance)


def check_timm_name(name: str, model: str) -> None:
    """An unknown architecture or pretrained tag is a sheet error, reported before any download."""
    import timm

    architecture = name.split(".")[0]
    if not timm.is_model(architecture):
        raise FetchError(f"model {model!r}: unknown timm model {architecture!r}{did_you_mean(architecture, timm.list_models())}")
    tags = timm.list_pretrained(f"{architecture}.*")
    if not tags:
        raise FetchError(f"model {model!r}: timm model {architecture!r} has no pretrained weights")
    if "." in name and name not in tags:
        raise FetchError(f"model {model!r}: unknown timm pretrained tag {name!r}; valid: {', '.join(tags)}")


# ----------------------------------------------------------------------------- Hugging Face


def load_hf(argument: str, model: str) -> HubModel:
    """``hf:REPO[@REVISION]`` through transformers' ``AutoModel``, never running remote code.

    Where the repo has safetensors (a single file, or shards with an index) the weights are not
    loaded at all: the module tree is built from the config on the ``meta`` device, only to type
    the layers, and fetch converts the checkpoint tensor by tensor (hf_checkpoint), so an LLM is
    never held in memory, let alone twice. Otherwise ``AutoModel.from_pretrained`` loads it whole
    (``pytorch_model.bin`` through ``torch.load(weights_only=True)``, forced here as well).
    """
    import transformers

    repo, _, revision = argument.partition("@")
    source = f"hf:{argument}"
    unreachable = hf_cache_only_unless_reachable()
    options = {
        "revision": revision or None, "trust_remote_code": False, "cache_dir": hf_cache_dir(),
        "local_files_only": offline() or bool(unreachable),
    }
    streamed = guarded_load(model, source, hf_cache_hint(repo), lambda: hf_checkpoint(repo, model, options),
                            context=unreachable)
    if streamed is not None:
        module, weights = streamed
    else:
        weights = None
        module = guarded_load(model, source, hf_cache_hint(repo),
                              lambda: transformers.AutoModel.from_pretrained(repo, **options), context=unreachable)
    provenance = {"library": "transformers", "version": transformers.__version__,
                  "class": type(module).__name__, "loaded": "tensor by tensor" if weights else "whole",
                  **hf_snapshot(repo, revision or None, model)}
    return HubModel(module=module, weights=weights, provenance=provenance)


def hf_checkpoint(repo: str, model: str, options: dict[str, Any]) -> tuple[nn.Module, Mapping[str, Tensor]] | None:
    """The AutoModel tree on the meta device and its weights read lazily from the repo's safetensors.

    None (load the model whole instead) when the repo has no safetensors, or when an analysed
    weight of the tree is not in the checkpoint under its name (transformers would initialise it
    randomly or convert keys this does not know).
    """
    import transformers

    checkpoint = hf_safetensors_checkpoint(repo, model, options)
    if checkpoint is None:
        return None
    config = transformers.AutoConfig.from_pretrained(repo, **options)
    with torch.device("meta"):
        module = transformers.AutoModel.from_config(config, trust_remote_code=False)
    store, _ = load_state_dict(checkpoint, model)  # a TensorStore: headers only, nothing read yet
    weights = checkpoint_names(module, store)
    missing = [
        item.parameter for path, child in module.named_modules() for item, _ in module_weights(path, child)
        if item.parameter not in weights
    ]
    if missing:
        log.warning("model %s: %d analysed weights of %s are not in the checkpoint under their names "
                    "(first: %s); loading the model whole", model, len(missing), type(module).__name__, missing[0])
        return None
    return module, weights


def hf_safetensors_checkpoint(repo: str, model: str, options: dict[str, Any]) -> Path | None:
    """The repo's safetensors index (its shards beside it) or single file, downloaded into the
    cache if need be; None if it has neither.

    The index is looked for first; a repo (or, offline, a cache) without it may have one file.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError  # (also huggingface_hub.errors, from 0.24 on)

    def download(name: str) -> Path:
        return Path(hf_hub_download(repo, name, revision=options["revision"], cache_dir=options["cache_dir"],
                                    local_files_only=options["local_files_only"]))

    for name in HF_SAFETENSORS:
        try:
            path = download(name)
        except EntryNotFoundError:  # not in the repo, or (offline) not in the cache
            continue
        if name == "model.safetensors.index.json":
            for shard in shard_names(path, model):
                download(shard)
        return path
    return None


def shard_names(index: Path, model: str) -> list[str]:
    """The shard file names an index names, which must be plain names in the repo's top folder:
    they are downloaded before shard_files can check them."""
    try:
        names = sorted(set(read_json(index)["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise FetchError(f"model {model!r}: cannot read shard index {index}: {error!r}") from None
    for name in names:
        if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
            raise FetchError(f"model {model!r}: shard index {index} names an invalid shard file {name!r}")
    return names


def checkpoint_names(module: nn.Module, store: TensorStore) -> LazyTensors:
    """The checkpoint's tensors under the module tree's parameter names.

    A checkpoint saved from a model with a task head prefixes the base model's names with its
    ``base_model_prefix`` ("bert.", "transformer."), which AutoModel's loading strips; a tied
    parameter is saved under one of its names, which then serves all of them.
    """
    prefix = getattr(module, "base_model_prefix", "")
    aliases: dict[int, list[str]] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(parameter), []).append(name)
    names = {}
    for group in aliases.values():
        candidates = [key for name in group for key in (name, f"{prefix}.{name}") if key in store]
        if candidates:
            names.update(dict.fromkeys(group, candidates[0]))
    # the store's tensors under the module's parameter names, still read one at a time
    return LazyTensors({name: partial(store.__getitem__, key) for name, key in names.items()})


def hf_snapshot(repo: str, revision: str | None, model: str) -> dict[str, Any]:
    """The repo, resolved commit and weights files (with sha256) of a snapshot in the HF cache."""
    from huggingface_hub import try_to_load_from_cache

    for name in HF_WEIGHT_FILES:
        found = try_to_load_from_cache(repo, name, cache_dir=hf_cache_dir(), revision=revision)
        if isinstance(found, str):
            path = Path(found)
            files = [path, *shard_files(path, model)] if name.endswith(".index.json") else [path]
            return {"repo": repo, "revision": path.parent.name, "files": file_records(files)}
    return {"repo": repo, "revision": revision, "files": []}


# ----------------------------------------------------------------------------- shared


HUB_LOADERS: dict[str, Callable[[str, str], HubModel]] = {
    "torchvision": load_torchvision, "timm": load_timm, "hf": load_hf,
}


def guarded_load(
    model: str, source: str, cache_hint: str, load: Callable[[], Loaded], context: str = ""
) -> Loaded:
    """Run a library's loader; whatever fails becomes one FetchError naming model, source and fix.

    A checkpoint the weights-only unpickler rejects is reported as refused (it would run code);
    anything else (no network, a missing or corrupt cache file, an unknown repo) as a download
    error with the ways to supply the weights locally; ``context`` (why the hub was not asked)
    goes before the library's own reason.
    """
    try:
        return load()
    except FetchError:
        raise
    except pickle.UnpicklingError as error:
        raise FetchError(
            f"model {model!r}: refusing to load the weights of source {source!r}: {refusal_reason(error)}; "
            f"zooscope never runs pickled code: {CONVERT_HINT}"
        ) from None
    except Exception as error:  # network errors, corrupt files: all end the fetch the same way
        raise download_error(model, source, context + first_line(error), cache_hint) from None


def hf_cache_only_unless_reachable() -> str:
    """Switch huggingface_hub to its cache when the hub cannot be reached; why, or "" if it can.

    Why check first: huggingface_hub retries a failed request with exponential backoff (half a
    minute per file), so a machine without network would wait minutes per model before failing.
    One connection attempt decides; a warm cache still serves the model. The switch lasts until
    hub_environment() ends.
    """
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if offline():
        return ""
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection(
            (endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)), timeout=CONNECT_TIMEOUT_S
        ).close()
        return ""
    except OSError as error:
        constants.HF_HUB_OFFLINE = True
        return f"{constants.ENDPOINT} is unreachable ({error}), so only the cache was looked in: "


@contextlib.contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """Force ``weights_only=True`` on every ``torch.load`` inside the block.

    torchvision's loader passes ``weights_only=False`` by default; a hub checkpoint is untrusted
    data, so no pickled code may run whichever library asks. A refused file raises
    ``pickle.UnpicklingError``, which the loaders report as a FetchError.
    """
    real_load = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return real_load(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = real_load


@contextlib.contextmanager
def hub_environment() -> Iterator[None]:
    """Apply HF_HOME/HF_HUB_CACHE/HF_HUB_OFFLINE as set now, and bound network waits.

    huggingface_hub reads these variables once, at import; reading them per fetch makes a
    changed environment (a test, a profile) take effect. The socket timeout bounds torch.hub's
    downloads, which set none.
    """
    from huggingface_hub import constants

    saved = {name: getattr(constants, name) for name in ("HF_HUB_CACHE", "HF_HUB_OFFLINE")}
    timeout = socket.getdefaulttimeout()
    constants.HF_HUB_CACHE = hf_cache_dir()
    constants.HF_HUB_OFFLINE = offline()
    socket.setdefaulttimeout(NETWORK_TIMEOUT_S)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(constants, name, value)
        socket.setdefaulttimeout(timeout)


def offline() -> bool:
    """Whether the user asked for no network: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set true."""
    return any(
        os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hf_cache_dir() -> str:
    """The Hugging Face hub cache: HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def hf_cache_hint(repo: str) -> str:
    """How to fill the HF cache on another machine, for a download error's message."""
    return (
        f"run `hf download {repo}` where the hub is reachable and copy the cache "
        f"({hf_cache_dir()}, set by HF_HOME) here"
    )


def download_error(model: str, source: str, reason: str, cache_hint: str) -> FetchError:
    """The one message for a hub model that could not be loaded: model, source, reason, fixes."""
    return FetchError(
        f"model {model!r}: cannot load source {source!r}: {reason.rstrip('.')}. "
        f"If the weights cannot be downloaded here: {cache_hint}, {LOCAL_HINT}"
    )


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (library messages run long)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def did_you_mean(name: str, choices: list[str]) -> str:
    """"; did you mean ...?" with the closest valid names, or nothing."""
    close = difflib.get_close_matches(name, choices, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def file_records(paths: list[Path]) -> list[dict[str, str]]:
    """{file, sha256} of each weights file read: the identity of what was audited."""
    return [{"file": path.name, "sha256": file_sha256(path)} for path in paths if path.is_file()]


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed in 16 MiB blocks (hub weights run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
