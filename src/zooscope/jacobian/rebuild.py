"""A fetched model as a runnable ``nn.Module``, for the stages that need a forward pass (Jacobian).

For a rebuildable source (``train:``, ``random:``, ``torchvision:``, ``timm:``, ``hf:``, and
``file:`` model folders with a config.json) fetch stores the module's whole state in
model.safetensors: the analysed weights (what layers.json lists, in their stored dtype) followed by
the rest (biases, norms, buffers, weights the selection left out), a tied weight once. The module is
built again by its kind's ``rebuild`` from meta.json's ``architecture`` (no download, no retraining,
no remote code), loaded from that file, and every analysed weight is checked against the sha256
layers.json records, so the module is the fetched one bit for bit (as float32), or an error says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from zooscope.layers import layers_from_module, tree_weights
from zooscope.sources.hf import runnable_class
from zooscope.sources.registry import KINDS, rebuildable
from zooscope.sources.selection import parse_selection
from zooscope.zoo import parse_source


class RebuildError(ValueError):
    """A model that cannot be rebuilt as a module; the message names it and why."""


def rebuild_module(meta: Mapping[str, Any], layers: Sequence[Mapping[str, Any]],
                   weights: str | Path) -> nn.Module:
    """The fetched model of ``meta`` (meta.json) with its state from ``weights``
    (model.safetensors), verified against ``layers`` (layers.json's ``layers``), in eval mode."""
    from safetensors.torch import load_file

    model = meta["model"]
    kind, _ = parse_source(meta["source"], model)
    spec = KINDS[kind]
    refetch = f"delete resources/models/{model} and rerun to refetch it"
    if spec.rebuild is None:
        raise RebuildError(
            f"model {model!r}: a {kind}: model cannot be run from its fetched files; the Jacobian stage "
            f"supports {', '.join(k + ':' for k in rebuildable())} models"
        )
    try:
        network = spec.rebuild(meta)
    except KeyError as error:
        raise RebuildError(f"model {model!r}: its meta.json has no {error} to build it from (fetched by an older "
                           f"zooscope?); {refetch}") from None
    except Exception as error:  # the library cannot build it (unknown name, a config it rejects)
        raise RebuildError(f"model {model!r}: cannot build it again: {error}") from None
    architecture = meta["architecture"]
    state = module_state(network, load_file(str(weights)))
    expected = network.state_dict(keep_vars=True)
    aliases: dict[int, set[str]] = {}
    for key, tensor in expected.items():
        aliases.setdefault(id(tensor), set()).add(key)
    parameters = {id(parameter) for parameter in network.parameters()}
    missing = sorted(key for key, tensor in expected.items()
                     if id(tensor) in parameters and not aliases[id(tensor)] & state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise RebuildError(
            f"model {model!r}: {weights} does not hold the whole state of its "
            f"{architecture.get('name') or architecture.get('class')} "
            f"(missing {', '.join(missing[:3]) or 'none'}; unexpected {', '.join(unexpected[:3]) or 'none'}); {refetch}"
        )
    network.load_state_dict(state, strict=False)  # buffers it does not hold keep the module's own values
    check_weights(model, network, layers, parse_selection(meta.get("selection") or {}))
    return runnable(model, network).eval()


def runnable(model: str, network: nn.Module) -> nn.Module:
    """The module as the Jacobian stage calls it: float inputs in, a (samples, classes) logits
    tensor out. A transformers model returns a ModelOutput: an image classifier
    (``...ForImageClassification``, pixel values in) is given a forward that returns its logits,
    keeping its parameter names; other transformers models (a language model's token inputs, a
    base model without a head) are refused."""
    if not type(network).__module__.startswith("transformers."):
        return network
    cls = type(network)
    if not runnable_class(cls.__name__):
        raise RebuildError(
            f"model {model!r}: the Jacobian stage runs classifiers of float inputs (images, vectors: the data "
            f"column's x) and reads their logits; {cls.__name__} is not a transformers image classifier "
            "(a language model's token inputs are not supported); leave its data cell empty"
        )
    network.__class__ = type(cls.__name__, (cls,), {"forward": lambda self, x: cls.forward(self, x).logits})
    return network


def module_state(network: nn.Module, stored: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The module's state dict from model.safetensors: an analysed weight is stored as its matrix
    (zooscope.layers.ModuleWeight), so a transposed one (transformers' Conv1D) is transposed back,
    a MultiheadAttention's q/k/v parts are joined into its in_proj_weight again and fused experts'
    matrices stacked into their parameter (3-D, or the row blocks of a matrix)."""
    import torch

    state = dict(stored)
    pieces: dict[str, dict[int, Tensor]] = {}
    joins: dict[str, tuple] = {}
    for item, parameter in tree_weights(network):
        if item.key not in state or not item.derived:
            continue
        matrix = state.pop(item.key)
        matrix = matrix.T.contiguous() if item.transpose else matrix
        if item.norm is not None:
            continue  # computed from its weight norm's two tensors, which the state holds
        if item.part is not None:
            pieces.setdefault(item.parameter, {})[item.part] = matrix
            joins[item.parameter] = (torch.cat, 3)
        elif item.expert is not None:
            pieces.setdefault(item.parameter, {})[item.expert] = matrix
            joins[item.parameter] = (lambda matrices, shape=parameter.shape: torch.stack(matrices).reshape(shape),
                                     item.experts)
        else:
            state[item.parameter] = matrix
    for parameter, found in pieces.items():
        join, count = joins[parameter]
        if parameter not in state and len(found) == count:
            state[parameter] = join([found[i] for i in range(count)])
    return state


def check_weights(model: str, network: nn.Module, layers: Sequence[Mapping[str, Any]], select=None) -> None:
    """Raise RebuildError unless the module's analysed weights (under the fetch's layer
    selection) hash as layers.json records."""
    rebuilt = {layer.tensor: layer.sha256 for layer in layers_from_module(network, select=select).layers}
    recorded = {layer["tensor"]: layer["sha256"] for layer in layers}
    if rebuilt != recorded:
        differ = sorted(k for k in recorded.keys() | rebuilt.keys() if recorded.get(k) != rebuilt.get(k))
        raise RebuildError(
            f"model {model!r}: the model's weights differ from the fetched ones "
            f"({', '.join(differ[:3])}{'...' if len(differ) > 3 else ''}): model.safetensors does not "
            f"match layers.json; delete resources/models/{model} and rerun to refetch it"
        )
