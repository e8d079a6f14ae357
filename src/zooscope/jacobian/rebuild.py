"""A fetched model as a runnable ``nn.Module``, for the stages that need a forward pass (Jacobian).

For ``train:``/``random:`` sources fetch stores the module's whole state in model.safetensors:
the analysed weights (what layers.json lists) followed by the rest (biases, norms, buffers). The
module is rebuilt from meta.json's architecture and loaded from that file, without retraining;
every analysed weight is then checked against the sha256 layers.json records, so the module is
the fetched one bit for bit, or an error says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from zooscope.models import architectures
from zooscope.layers import layers_from_module
from zooscope.sources.registry import KINDS, rebuildable
from zooscope.zoo import parse_source


class RebuildError(ValueError):
    """A model that cannot be rebuilt as a module; the message names it and why."""


def rebuild_module(meta: Mapping[str, Any], layers: Sequence[Mapping[str, Any]],
                   weights: str | Path) -> nn.Module:
    """The fetched ``train:``/``random:`` model of ``meta`` (meta.json) with its state from
    ``weights`` (model.safetensors), verified against ``layers`` (layers.json's ``layers``), in
    eval mode."""
    from safetensors.torch import load_file

    model = meta["model"]
    kind, _ = parse_source(meta["source"], model)
    if not KINDS[kind].rebuildable:
        raise RebuildError(
            f"model {model!r}: a {kind}: model cannot be run from its fetched files (model.safetensors "
            "holds only the analysed weights, no biases or norms); the Jacobian stage supports "
            f"{', '.join(k + ':' for k in rebuildable())} models"
        )
    architecture = meta["architecture"]
    network = architectures.build_architecture(architecture["name"], architecture["options"])
    state = load_file(str(weights))
    missing, unexpected = (sorted(network.state_dict().keys() - state.keys()),
                           sorted(state.keys() - network.state_dict().keys()))
    if missing or unexpected:
        raise RebuildError(
            f"model {model!r}: {weights} does not hold the whole state of a {architecture['name']} "
            f"(missing {', '.join(missing[:3]) or 'none'}; unexpected {', '.join(unexpected[:3]) or 'none'}); "
            f"it was fetched by an older zooscope: delete resources/models/{model} and rerun to refetch it"
        )
    network.load_state_dict(state)
    check_weights(model, network, layers)
    return network.eval()


def check_weights(model: str, network: nn.Module, layers: Sequence[Mapping[str, Any]]) -> None:
    """Raise RebuildError unless the module's analysed weights hash as layers.json records."""
    rebuilt = {layer.tensor: layer.sha256 for layer in layers_from_module(network).layers}
    recorded = {layer["tensor"]: layer["sha256"] for layer in layers}
    if rebuilt != recorded:
        differ = sorted(k for k in recorded.keys() | rebuilt.keys() if recorded.get(k) != rebuilt.get(k))
        raise RebuildError(
            f"model {model!r}: the model's weights differ from the fetched ones "
            f"({', '.join(differ[:3])}{'...' if len(differ) > 3 else ''}): model.safetensors does not "
            f"match layers.json; delete resources/models/{model} and rerun to refetch it"
        )
