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
    config = dataclasses.replace(TRAINING_DEFAULTS[arch], **given)
    if not 0.0 <= config.label_noise <= 1.0:
        raise ValueError(f"column 'label_noise' must be in [0, 1], got {config.label_noise}")
    for name in ("epochs", "batch_size", "lr"):
        if not getattr(config, name) > 0:
            raise ValueError(f"column {name!r} must be positive, got {getattr(config, name)}")
    return architecture, config


def unanalysed_state(network: nn.Module, layers: LayerList) -> dict[str, Tensor]:
    """The entries of the module's state dict that are not analysed weights (biases, norms, buffers)."""
    analysed = {layer.tensor for layer in layers.layers}
    return {key: value for key, value in network.state_dict().items() if key not in analysed}


def module_parameters(network: nn.Module) -> int:
    """All parameters of a module tree (shared ones once)."""
    from zooscope.layers import num_parameters

    return num_parameters(network.parameters())


def measured_source() -> str:
    from zooscope.models import digits

    return f"measured: digits test split ({len(digits.load_digits_split().y_test)} samples)"
