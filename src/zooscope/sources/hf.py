"""``hf:REPO[@REVISION]``: a Hugging Face model through transformers' ``AutoModel``, never running
remote code. A repo with safetensors is not loaded at all: its tree is built on the meta device and
its weights are read from the checkpoint one at a time (hf_checkpoint), for models of any size.
Loaded safely and cached as zooscope.sources.hubs describes.
"""
from __future__ import annotations

import logging
import re
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from zooscope.sources.base import Fetched, FetchError, SourceKind
from zooscope.sources.file import shard_files, shard_index_names

if TYPE_CHECKING:
    from torch import Tensor, nn

    from zooscope.layers import LazyTensors, TensorStore
    from zooscope.sources.hubs import HubModel
    from zooscope.zoo import ZooRow

log = logging.getLogger(__name__)

# A shard file named by a Hugging Face index: a plain file name in the repo's top folder.
SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors")
# Where a Hugging Face repo snapshot keeps its weights, most preferred first (index before single file).
HF_WEIGHT_FILES = (
    "model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin",
)
# Of these, the ones fetch converts tensor by tensor without loading the model (hf_checkpoint).
HF_SAFETENSORS = HF_WEIGHT_FILES[:2]
# What a repo name and a revision may be. A revision (branch, tag, commit, refs/pr/N) names a file
# under the hub cache's refs/, so it may have folders but no '..' or '//'.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_]|[.-](?![.-]))*"
_REVISION = r"[A-Za-z0-9](?:[A-Za-z0-9_]|[./-](?![./-]))*"


def fetch(row: ZooRow, threads: int) -> Fetched:
    from zooscope.sources.hubs import fetch_hub

    return fetch_hub(row, load_hf, threads)


def load_hf(argument: str, model: str) -> HubModel:
    """``hf:REPO[@REVISION]`` through transformers' ``AutoModel``, never running remote code.

    Where the repo has safetensors (a single file, or shards with an index) the weights are not
    loaded at all: the module tree is built from the config on the ``meta`` device, only to type
    the layers, and fetch converts the checkpoint tensor by tensor (hf_checkpoint), so an LLM is
    never held in memory, let alone twice. Otherwise ``AutoModel.from_pretrained`` loads it whole
    (``pytorch_model.bin`` through ``torch.load(weights_only=True)``, forced here as well).
    """
    import transformers

    from zooscope.sources.hubs import (
        HubModel, guarded_load, hf_cache_dir, hf_cache_hint, hf_cache_only_unless_reachable, offline,
    )

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
    import torch
    import transformers

    from zooscope.layers import module_weights
    from zooscope.sources.file import load_state_dict

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
    names = shard_index_names(index, model)
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
    from zooscope.layers import LazyTensors

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

    from zooscope.sources.hubs import file_records, hf_cache_dir

    for name in HF_WEIGHT_FILES:
        found = try_to_load_from_cache(repo, name, cache_dir=hf_cache_dir(), revision=revision)
        if isinstance(found, str):
            path = Path(found)
            files = [path, *shard_files(path, model)] if name.endswith(".index.json") else [path]
            return {"repo": repo, "revision": path.parent.name, "files": file_records(files)}
    return {"repo": repo, "revision": revision, "files": []}


KIND = SourceKind(
    name="hf", syntax="hf:REPO[@REVISION]", example="hf:openai-community/gpt2@main",
    argument=rf"{_NAME}(/{_NAME})?(@{_REVISION})?", fetch=fetch,
)
