"""What the hub sources (torchvision:, timm:, hf:) share: loading safely, caches, provenance.

Each hub kind (zooscope.sources.torchvision, .timm, .hf) has a loader that goes through its
library's own loading code (so a model loads exactly as its authors publish it, key remapping
included) and returns a HubModel: the module tree, the accuracy the weights report (torchvision
only) and a provenance record for meta.json (the library, the resolved weights name or revision,
and the sha256 of every weights file read). :func:`fetch_hub` turns it into the common form.

Safety, enforced here for every hub path rather than trusted to each library's defaults:
- every ``torch.load`` made while a hub model loads is forced to ``weights_only=True``
  (torchvision's ``load_state_dict_from_url`` defaults to ``weights_only=False``);
- Hugging Face models are always loaded with ``trust_remote_code=False``.

Caches and offline use: ``TORCH_HOME`` (torchvision), ``HF_HOME``/``HF_HUB_CACHE`` (timm and
transformers) and ``HF_HUB_OFFLINE=1`` are read when a model is fetched, not when a library is
imported. Where a download is impossible the fetch fails at once with a FetchError naming the
model, the source, the cache file expected and how to supply the weights locally.

This module imports torch: the kind modules import it inside their fetch only.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
import pickle
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, TypeVar

import torch
from torch import Tensor, nn

from zooscope.layers import layers_from_module
from zooscope.sources import coverage
from zooscope.sources.base import CONVERT_HINT, Fetched, FetchError
from zooscope.sources.built import checkpoint_state, module_parameters, unanalysed_state
from zooscope.sources.checkpoints import refusal_reason

if TYPE_CHECKING:
    from zooscope.zoo import ZooRow

log = logging.getLogger(__name__)
Loaded = TypeVar("Loaded")

# Seconds a hub request may wait for the network before the fetch fails (no long retry loops).
NETWORK_TIMEOUT_S = 20
# Seconds the one reachability check of the Hugging Face hub may take (hf_hub_reachable).
CONNECT_TIMEOUT_S = 5
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
    # meta.json's architecture: what the kind's rebuild needs to build the module again
    architecture: dict[str, Any] = field(default_factory=dict)


def fetch_hub(row: ZooRow, load: Callable[[str, str], HubModel], threads: int) -> Fetched:
    """Load a hub model with ``load(argument, model)``, safely; layers are typed from its module tree.

    The sheet's accuracy wins; else the one the weights report (torchvision's meta), else none.
    meta.json's ``weights`` records where the weights came from.
    """
    from zooscope.models import digits

    model, accuracy = row.model, row.accuracy
    with digits.deterministic_torch(0, threads):
        with weights_only_torch_load(), hub_environment():
            loaded = load(row.source.argument, model)
        layers = layers_from_module(loaded.module, loaded.weights, row.selection)
    if accuracy is None and loaded.accuracy is None:
        log.warning("model %s: no accuracy in the zoo sheet and none reported by %s:%s", model,
                    row.source.kind, row.source.argument)
    return Fetched(
        layers=layers,
        # the whole state, so that the Jacobian stage runs the model without a second download
        other_tensors=unanalysed_state(loaded.module, layers) if loaded.weights is None
        else checkpoint_state(loaded.module, loaded.weights, layers),
        num_params=module_parameters(loaded.module),
        accuracy=accuracy if accuracy is not None else loaded.accuracy,
        accuracy_source="zoo sheet" if accuracy is not None else loaded.accuracy_source,
        extra_meta={"weights": loaded.provenance, "architecture": loaded.architecture},
        # a module loaded whole: its state; one read lazily: the checkpoint, under its own names
        inventory=coverage.module_inventory(loaded.module, layers) if loaded.weights is None
        else coverage.checkpoint_inventory(loaded.module, loaded.weights, layers),
    )


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
