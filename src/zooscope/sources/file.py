"""``file:PATH``: a weights file or model folder on disk (docs/intake.md).

The file's format is told by its content (zooscope.sources.checkpoints: safetensors, PyTorch
files under any name, NumPy .npz), read without ever running code from it. A model folder with a
``config.json`` that transformers builds (no remote code) is typed by its module tree, exactly as
the ``hf:`` source types the same files (zooscope.sources.hf.tree_over_checkpoint); anything else
by tensor name and rank (zooscope.layers.layers_from_state_dict); meta.json's ``layer_typing``
says which. PATH is relative to the zoo sheet's folder (resolved once, when the sheet is parsed:
zooscope.zoo). As every kind module, it imports at its top only what its declaration needs (the
Snakefile imports the registry); the rest where it is used.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from zooscope.sources.base import Fetched, SourceKind

if TYPE_CHECKING:
    from zooscope.sources.checkpoints import Checkpoint
    from zooscope.zoo import ZooRow

log = logging.getLogger(__name__)

BY_NAME = "tensor names and ranks"


def fetch(row: ZooRow, threads: int) -> Fetched:
    """Read a weights file or model folder; type its layers by module tree or by name, or, for
    an ONNX, GGUF or Keras file (recognised by its content), by its format's reader."""
    from zooscope.layers import layers_from_module, layers_from_state_dict
    from zooscope.sources import coverage, formats
    from zooscope.sources.checkpoints import read_checkpoint

    model, path = row.model, row.source.path
    if (stored_format := formats.detect(path)) is not None:
        return fetch_format(row, stored_format)
    checkpoint = read_checkpoint(path, model, row.checkpoint_key)
    tree, typing = folder_tree(path, checkpoint, model)
    extra_meta: dict[str, Any] = {"checkpoint": checkpoint.to_meta(), "layer_typing": typing}
    other_tensors: Any = {}
    if tree is not None:  # rebuildable: the whole state is stored, and how to build the module
        from zooscope.sources.built import checkpoint_state
        from zooscope.sources.hf import architecture_meta

        module, weights = tree
        layers = layers_from_module(module, weights, row.selection)
        inventory = coverage.checkpoint_inventory(module, weights, layers)
        other_tensors = checkpoint_state(module, weights, layers)
        extra_meta["architecture"] = architecture_meta(module)
    else:
        layers = layers_from_state_dict(checkpoint.tensors, row.selection)
        inventory = coverage.inventory({key: checkpoint.describe(key) for key in checkpoint.tensors}, layers)
    return Fetched(
        layers=layers,
        num_params=checkpoint.num_parameters(),
        accuracy=row.accuracy,
        accuracy_source="zoo sheet" if row.accuracy is not None else None,
        extra_meta=extra_meta,
        inventory=inventory,
        other_tensors=other_tensors,
    )


def fetch_format(row: ZooRow, file_format: str) -> Fetched:
    """An ONNX, GGUF or Keras file through its reader (zooscope.sources.formats), under the row's
    layer selection; meta.json gets every stored tensor's dtype (quantisation) and what became of
    it, the coverage table every stored tensor."""
    from zooscope.layers import layers_from_format
    from zooscope.sources import formats

    weights = formats.read_format(file_format, row.source.path, row.model)
    layers = layers_from_format(weights, row.selection)
    inventory = weights.inventory()
    for record in inventory:  # a layer the selection left out: its reason instead of "analysed"
        names = record["layer"].split(",") if record["layer"] else []
        kept = [name for name in names if f"{name}.weight" not in layers.left_out]
        if names and not kept:
            reason, detail = layers.left_out[f"{names[0]}.weight"]
            record.update(layer="", reason=reason, detail=detail)
        else:
            record["layer"] = ",".join(kept)
    return Fetched(
        layers=layers,
        num_params=weights.num_parameters(),
        accuracy=row.accuracy,
        accuracy_source="zoo sheet" if row.accuracy is not None else None,
        extra_meta=weights.to_meta(),
        inventory=inventory,
    )


def rebuildable(path: Path | None) -> bool:
    """A file: model can be run by the Jacobian stage when it is a model folder whose config.json
    names a transformers image classifier (``architectures[0]``: zooscope.sources.hf.runnable_class);
    a bare state dict has no architecture, and a language model or a base model is not run (its
    token inputs). Read with json alone when the sheet is parsed (no torch, no transformers)."""
    config = path / "config.json" if path is not None else None
    if config is None or not config.is_file():
        return False
    from zooscope.sources.hf import runnable_class

    try:
        architectures = json.loads(config.read_text()).get("architectures") or [None]
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object: no tree either
        return False
    return runnable_class(architectures[0]) if isinstance(architectures, list) else False


def rebuild(meta: Mapping[str, Any]):
    """A fetched model folder's transformers module, from meta.json (zooscope.sources.hf)."""
    if (meta.get("architecture") or {}).get("library") != "transformers":
        raise ValueError(f"a file: model cannot be run from its fetched files unless it is a model folder with a "
                         f"config.json that transformers builds (this one: {meta.get('layer_typing', 'typed by name')})")
    from zooscope.sources.hf import rebuild_transformers

    return rebuild_transformers(meta)


def folder_tree(path: Path, checkpoint: Checkpoint, model: str) -> tuple[tuple[Any, Any] | None, str]:
    """((module tree, its weights), how typed) for a model folder whose config.json transformers
    builds without remote code and whose checkpoint holds that tree's weights; else (None, why
    the layers are typed by name)."""
    if not (path / "config.json").is_file():
        return None, f"{BY_NAME} (no config.json)"
    import transformers

    from zooscope.sources.hf import tree_over_checkpoint
    from zooscope.sources.hubs import first_line

    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    except Exception as error:  # unknown model type, remote code, invalid JSON: all mean "no tree"
        log.warning("model %s: %s is not usable (%s); typing layers by name", model, path / "config.json",
                    first_line(error))
        return None, f"{BY_NAME} (config.json not usable: {first_line(error)})"
    tree = tree_over_checkpoint(config, checkpoint.tensors, model)
    if tree is None:
        return None, f"{BY_NAME} (the checkpoint lacks weights of the model config.json describes)"
    from zooscope.layers import unclaimed_weights

    unclaimed = unclaimed_weights(tree[1])
    by_name = f", and {len(unclaimed)} weights it has no parameter for by {BY_NAME}" if unclaimed else ""
    return tree, f"module tree of transformers {type(tree[0]).__name__} (config.json){by_name}"


# file: rows ignore option columns: the weights are given, nothing is built or trained.
KIND = SourceKind(
    name="file", syntax="file:PATH", example="file:weights/model.safetensors", argument=r".+",
    fetch=fetch, ignores_options=True, local_path=True, rebuildable=rebuildable, rebuild=rebuild,
)
