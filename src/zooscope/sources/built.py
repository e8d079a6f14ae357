"""What the sources built here (``train:``, ``random:``) share: the demo architectures' options
(zooscope.models.catalog, checked without torch when the sheet is parsed) and the module's state."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping

from zooscope.models.catalog import (
    ARCHITECTURE_OPTIONS,
    TRAINING_DEFAULTS,
    TRAINING_OPTION_TYPES,
    TrainingConfig,
    architecture_options,
)

if TYPE_CHECKING:
    from torch import Tensor, nn

    from zooscope.layers import LayerList

# The architecture option columns: integers.
ARCHITECTURE_OPTION_TYPES: dict[str, type] = dict.fromkeys(ARCHITECTURE_OPTIONS, int)


def arch_options(arch: str, options: Mapping[str, Any]) -> dict[str, int]:
    """The architecture's full options from a row's typed options (ValueError names what is wrong)."""
    return architecture_options(arch, {key: value for key, value in options.items() if key in ARCHITECTURE_OPTIONS})


def training_setup(arch: str, options: Mapping[str, Any]) -> tuple[dict[str, int], TrainingConfig]:
    """Architecture options and the training config: the architecture's defaults plus the row's."""
    architecture = arch_options(arch, options)
    given = {key: value for key, value in options.items() if key in TRAINING_OPTION_TYPES}
    return architecture, checked_training(dataclasses.replace(TRAINING_DEFAULTS[arch], **given))


def checked_training(config: TrainingConfig) -> TrainingConfig:
    """The training config, its values checked (ValueError naming the column)."""
    if not 0.0 <= config.label_noise <= 1.0:
        raise ValueError(f"column 'label_noise' must be in [0, 1], got {config.label_noise}")
    for name in ("epochs", "batch_size", "lr"):
        if not getattr(config, name) > 0:
            raise ValueError(f"column {name!r} must be positive, got {getattr(config, name)}")
    if not 2 <= config.classes <= 10:
        raise ValueError(f"column 'classes' must be 2 .. 10 (train on the digits 0 .. classes - 1), got {config.classes}")
    if not 0 <= config.stop_epoch <= config.epochs:
        raise ValueError(f"column 'stop_epoch' must be 0 (the whole run) .. epochs ({config.epochs}), "
                         f"got {config.stop_epoch}")
    return config


def unanalysed_state(network: nn.Module, layers: LayerList) -> dict[str, Tensor]:
    """The entries of the module's state dict that are not analysed weights (biases, norms,
    buffers, weights the selection left out); a weight tied to an analysed one is not stored twice."""
    stored = stored_parameters(network, layers)
    return {key: value for key, value in network.state_dict().items() if key not in stored}


def stored_parameters(network: nn.Module, layers: LayerList) -> set[str]:
    """The state-dict keys whose values model.safetensors holds as layers: the analysed weights,
    those tied to one, and a parameter all of whose matrices are layers (a MultiheadAttention's
    in_proj_weight, fused experts), which the Jacobian stage joins again
    (zooscope.jacobian.rebuild.module_state) instead of the cache holding its bytes twice."""
    from zooscope.layers import tree_weights

    stored = {layer.tensor for layer in layers.layers} | set(layers.tied)
    matrices: dict[str, list[str]] = {}
    for item, _ in tree_weights(network):
        if item.derived and item.norm is None:  # a weight norm's tensors are kept as they are
            matrices.setdefault(item.parameter, []).append(item.key)
    return stored | {parameter for parameter, keys in matrices.items() if stored.issuperset(keys)}


def checkpoint_state(network: nn.Module, weights, layers: LayerList):
    """unanalysed_state of a module tree whose weights are a checkpoint read lazily
    (zooscope.tensors.RenamedTensors under the tree's names): still read one at a time."""
    from zooscope.tensors import RenamedTensors

    stored = stored_parameters(network, layers)
    keys = [key for key in network.state_dict(keep_vars=True) if key not in stored and key in weights]
    return RenamedTensors(weights.store, {key: weights.names[key] for key in keys})


def module_fields(network: nn.Module, selection) -> dict[str, Any]:
    """What a module built here gives its Fetched: its layers (under the row's selection), the
    rest of its state (stored for the Jacobian stage), its coverage inventory, its parameter count."""
    from zooscope.layers import layers_from_module
    from zooscope.sources import coverage

    layers = layers_from_module(network, select=selection)
    return {"layers": layers, "other_tensors": unanalysed_state(network, layers),
            "inventory": coverage.module_inventory(network, layers), "num_params": module_parameters(network)}


def rebuild(meta: Mapping[str, Any]) -> nn.Module:
    """A train:/random: model's architecture, from meta.json (its state comes from its files)."""
    from zooscope.models import architectures

    return architectures.build_architecture(meta["architecture"]["name"], meta["architecture"]["options"])


def module_parameters(network: nn.Module) -> int:
    """All parameters of a module tree (shared ones once)."""
    from zooscope.tensors import num_parameters

    return num_parameters(network.parameters())


def measured_source() -> str:
    from zooscope.models import digits

    return f"measured: digits test split ({len(digits.load_digits_split().y_test)} samples)"
