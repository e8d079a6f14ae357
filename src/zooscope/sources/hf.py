"""``hf:REPO[@REVISION]``: a Hugging Face model through transformers, never running remote code:
the class the checkpoint was saved from (``config.architectures``, where transformers has it, the
head included), else ``AutoModel``'s base model (hf_classes). A repo with safetensors is not loaded
at all: its tree is built on the meta device and its weights are read from the checkpoint one at a
time (hf_checkpoint), for models of any size. A local model folder (``file:``) is typed by the
same tree (tree_over_checkpoint). Loaded safely and cached as zooscope.sources.hubs describes.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from zooscope.sources.base import Fetched, FetchError, SourceKind

if TYPE_CHECKING:
    from torch import nn

    from zooscope.tensors import RenamedTensors, TensorStore
    from zooscope.sources.hubs import HubModel
    from zooscope.zoo import ZooRow

log = logging.getLogger(__name__)

# The transformers models the Jacobian stage runs: image classifiers, pixel values in, logits out
# (zooscope.jacobian.rebuild.runnable). A language model's token inputs are not supported.
RUNNABLE_SUFFIX = "ForImageClassification"


def runnable_class(name: object) -> bool:
    """Whether a transformers class name (config.json's ``architectures[0]``) is one the Jacobian
    stage can run; torch-free, so the zoo sheet's check can ask it of a file: folder."""
    return isinstance(name, str) and name.endswith(RUNNABLE_SUFFIX)


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
    """``hf:REPO[@REVISION]`` (module docstring).

    Where the repo has safetensors (a single file, or shards with an index) the weights are not
    loaded at all: the module tree is built from the config on the ``meta`` device, only to type
    the layers, and fetch converts the checkpoint tensor by tensor (hf_checkpoint), so an LLM is
    never held in memory, let alone twice. Otherwise the class's ``from_pretrained`` loads it whole,
    in its stored dtype (``pytorch_model.bin`` through ``torch.load(weights_only=True)``, forced
    here as well).
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
        log.warning("model %s: loading %s whole", model, source)
        weights = None

        def load_whole() -> nn.Module:
            config = transformers.AutoConfig.from_pretrained(repo, **options)
            return hf_classes(config)[0].from_pretrained(repo, dtype="auto", **options)

        module = guarded_load(model, source, hf_cache_hint(repo), load_whole, context=unreachable)
    provenance = {"library": "transformers", "version": transformers.__version__,
                  "class": type(module).__name__, "loaded": "tensor by tensor" if weights else "whole",
                  **hf_snapshot(repo, revision or None, model)}
    return HubModel(module=module, weights=weights, provenance=provenance, architecture=architecture_meta(module))


def hf_checkpoint(repo: str, model: str, options: dict[str, Any]) -> tuple[nn.Module, RenamedTensors] | None:
    """The module tree on the meta device and its weights read lazily from the repo's safetensors
    (tree_over_checkpoint); None (load the model whole instead) when the repo has no safetensors
    or no tree's analysed weights are all in the checkpoint."""
    import transformers

    from zooscope.sources.checkpoints import read_checkpoint

    checkpoint = hf_safetensors_checkpoint(repo, model, options)
    if checkpoint is None:
        return None
    config = transformers.AutoConfig.from_pretrained(repo, **options)
    store = read_checkpoint(checkpoint, model).tensors  # a TensorStore: headers only, nothing read yet
    return tree_over_checkpoint(config, store, model)


def hf_classes(config) -> list:
    """The transformers classes to build a model of ``config`` with, in order of preference: the
    class it was saved from (``config.architectures[0]``, only as a class of transformers itself:
    no remote code), then ``AutoModel`` (the base model, without a task head)."""
    import transformers

    names = (getattr(config, "architectures", None) or [])[:1]
    found = [getattr(transformers, name, None) for name in names if isinstance(name, str)]
    return [cls for cls in found if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)] + [
        transformers.AutoModel]


def tree_over_checkpoint(config, store: Mapping[str, Any], model: str) -> tuple[nn.Module, RenamedTensors] | None:
    """A transformers module tree of ``config`` on the meta device (no weights, no remote code)
    and the checkpoint's tensors under its parameter names: for the hub and for local folders.

    The tree is the first of hf_classes whose analysed weights are all in the checkpoint (under
    their names, or their base model's prefixed names); depth is its module order (embeddings
    first, each block's attention before its MLP, the head last). None if no class fits:
    transformers would initialise the missing weights randomly or convert keys this does not know.
    The checkpoint's weights the tree has no parameter for (the per-expert weights of an MoE
    checkpoint, which transformers 5 fuses on load) are typed by name
    (zooscope.layers.unclaimed_weights).
    """
    import torch

    from zooscope.layers import tree_weights, unclaimed_weights

    for cls in hf_classes(config):
        with torch.device("meta"):
            module = cls.from_config(config, trust_remote_code=False) if cls.__name__ == "AutoModel" \
                else cls._from_config(config)
        weights = checkpoint_names(module, store)
        missing = [name for item, _ in tree_weights(module) if not item.optional
                   for name in (item.parameter, item.norm) if name is not None and name not in weights]
        if not missing:
            if unclaimed := unclaimed_weights(weights):
                log.info("model %s: %d weights of the checkpoint are no parameter of %s (first: %s); they are "
                         "typed by name and rank", model, len(unclaimed), type(module).__name__, unclaimed[0])
            return module, weights
        log.warning("model %s: %d analysed weights of %s are not in the checkpoint under their names (first: %s)",
                    model, len(missing), type(module).__name__, missing[0])
    return None


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
    from zooscope.sources.checkpoints import shard_index_names

    names = shard_index_names(index, model)
    for name in names:
        if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
            raise FetchError(f"model {model!r}: shard index {index} names an invalid shard file {name!r}")
    return names


def checkpoint_names(module: nn.Module, store: TensorStore) -> RenamedTensors:
    """The checkpoint's tensors under the module tree's state-dict names (parameters and
    persistent buffers), found under those names or the old ones transformers renames on load
    (renamed_checkpoint_keys).

    A checkpoint saved from a model with a task head prefixes the base model's names with its
    ``base_model_prefix`` ("bert.", "transformer."), which AutoModel's loading strips; a tied
    parameter is saved under one of its names, which then serves all of them.
    """
    from zooscope.layers import tree_weights
    from zooscope.tensors import RenamedTensors

    prefix = getattr(module, "base_model_prefix", "")
    aliases: dict[int, list[str]] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        aliases.setdefault(id(tensor), []).append(name)
    renamed = renamed_checkpoint_keys(module, store)
    # a mixture of experts' router and experts keep the checkpoint's own names (transformers 4's,
    # whose modules had them), whatever transformers 5 renames them to: see unclaimed_weights
    moe = {item.parameter for item, _ in tree_weights(module) if item.optional}
    names, copies = {}, {}
    for group in aliases.values():
        known = {} if moe.intersection(group) else renamed
        candidates = [known.get(key, key) for name in group for key in (name, f"{prefix}.{name}")
                      if key in store or key in known]
        if candidates:
            names.update(dict.fromkeys(group, candidates[0]))
            copies.update(dict.fromkeys(candidates[1:], candidates[0]))
    # the store's tensors under the module's parameter names, still read one at a time
    return RenamedTensors(store, names, aliases=copies)


def renamed_checkpoint_keys(module: nn.Module, store: Mapping[str, Any]) -> dict[str, str]:
    """Module name -> checkpoint key, for the checkpoint keys transformers renames on load.

    transformers 5 renamed modules of some models (ViT's ``encoder.layer.0.attention.attention.query``
    is ``layers.0.attention.q_proj``) and saves their checkpoints under the old names; loading
    applies the model's renamings (its WeightRenaming transforms). Applying the same ones here lets
    the tree type such a checkpoint, so that it is not loaded whole and can be run again. Only
    renamings, never the converters that merge tensors (fused experts: those weights stay
    unclaimed, zooscope.layers.unclaimed_weights). Empty with a transformers without them.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, apply_renamings
    except ImportError:
        return {}
    try:
        renamings = [t for t in get_model_conversion_mapping(module) if isinstance(t, WeightRenaming)]
    except Exception as error:  # an internal API of transformers: never let it stop a fetch
        log.debug("no checkpoint renamings for %s: %s", type(module).__name__, error)
        return {}
    if not renamings:
        return {}
    found: dict[str, str] = {}
    for key in store:
        new = apply_renamings(key, renamings)
        if new != key and new not in store:
            found.setdefault(new, key)
    return found


def architecture_meta(module: nn.Module) -> dict[str, Any]:
    """meta.json's ``architecture`` of a transformers model: its class and whole config, what
    rebuild_transformers needs to build it again (no download, no remote code)."""
    import json

    return {"library": "transformers", "class": type(module).__name__,
            "config": json.loads(module.config.to_json_string(use_diff=False))}


def rebuild_transformers(meta: Mapping[str, Any]) -> nn.Module:
    """A fresh transformers model of meta.json's ``architecture`` (its weights to be loaded)."""
    import transformers

    architecture = meta["architecture"]
    config = dict(architecture["config"])
    config = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    cls = getattr(transformers, architecture["class"])
    return cls._from_config(config)


def hf_snapshot(repo: str, revision: str | None, model: str) -> dict[str, Any]:
    """The repo, resolved commit and weights files (with sha256) of a snapshot in the HF cache."""
    from huggingface_hub import try_to_load_from_cache

    from zooscope.sources.checkpoints import shard_files
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
    rebuildable=True, rebuild=rebuild_transformers,
)
