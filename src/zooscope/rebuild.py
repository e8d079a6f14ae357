"""A fetched model as a runnable ``nn.Module``, for the stages that need a forward pass (Jacobian).

fetch stores only the analysed weights (model.safetensors: Linear/Conv/Embedding weights, no
biases, no norm parameters or buffers), which is all the weight ESD needs but not enough to run
the model. Until fetch stores the full state (proposal: ``resources/models/{model}/state.safetensors``,
every tensor of ``module.state_dict()`` in float32, for the sources that have a module), a
``train:``/``random:`` model is rebuilt by repeating fetch's deterministic recipe from meta.json
(architecture, options, seed, and the thread count training ran with), and the result is checked
against layers.json: every analysed weight must have the sha256 fetch recorded, so a rebuilt model
is the fetched one bit for bit, or an error says so.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import nn

from zooscope import architectures, digits
from zooscope.layers import layers_from_module
from zooscope.sources import _architecture_options, _training_setup, parse_source

REBUILDABLE = ("train", "random")


class RebuildError(ValueError):
    """A model that cannot be rebuilt as a module; the message names it and why."""


def rebuild_module(meta: Mapping[str, Any], layers: Sequence[Mapping[str, Any]]) -> nn.Module:
    """The fetched ``train:``/``random:`` model of ``meta`` (meta.json), verified against
    ``layers`` (layers.json's ``layers``), in eval mode."""
    model = meta["model"]
    kind, arch = parse_source(meta["source"], model)
    if kind not in REBUILDABLE:
        raise RebuildError(
            f"model {model!r}: a {kind}: model cannot be run from its fetched files (model.safetensors "
            "holds only the analysed weights, no biases or norms); the Jacobian stage supports "
            f"{', '.join(k + ':' for k in REBUILDABLE)} models"
        )
    options = dict(meta.get("options") or {})
    if kind == "train":
        arch_options, config = _training_setup(model, arch, options)
        threads = int(meta.get("training", {}).get("threads", 1))
        with digits.deterministic_torch(config.seed, threads):
            network = architectures.build_architecture(arch, arch_options)
        digits.train(network, config, threads=threads)
    else:
        with digits.deterministic_torch(options.get("seed", 0), 1):
            network = architectures.build_architecture(arch, _architecture_options(model, arch, options))
    check_weights(model, network, layers)
    return network.eval()


def check_weights(model: str, network: nn.Module, layers: Sequence[Mapping[str, Any]]) -> None:
    """Raise RebuildError unless the module's analysed weights hash as layers.json records."""
    rebuilt = {layer.tensor: layer.sha256 for layer in layers_from_module(network).layers}
    recorded = {layer["tensor"]: layer["sha256"] for layer in layers}
    if rebuilt != recorded:
        differ = sorted(k for k in recorded.keys() | rebuilt.keys() if recorded.get(k) != rebuilt.get(k))
        raise RebuildError(
            f"model {model!r}: the rebuilt model's weights differ from the fetched ones "
            f"({', '.join(differ[:3])}{'...' if len(differ) > 3 else ''}); training is reproducible only "
            "with the same torch build and thread count: refetch the model on this machine"
        )
