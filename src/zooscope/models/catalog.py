"""The demo architectures' names, options and defaults, and their training defaults, without torch.

A zoo sheet's ``train:ARCH``/``random:ARCH`` rows are checked against these when the workflow is
parsed (zooscope.zoo), before any job runs; zooscope.models.architectures builds the modules and
zooscope.models.digits trains them from the same tables.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# Each architecture's integer options and their defaults (the builders: zooscope.models.architectures).
ARCHITECTURE_DEFAULTS: dict[str, dict[str, int]] = {
    "mlp": {"width": 256, "depth": 2},
    "cnn": {"channels": 64},
    "lenet": {"channels": 32, "width": 512},
}

# Every option name any architecture accepts: the zoo sheet's architecture columns.
ARCHITECTURE_OPTIONS: tuple[str, ...] = tuple(
    sorted({name for defaults in ARCHITECTURE_DEFAULTS.values() for name in defaults})
)


def architecture_options(name: str, options: Mapping[str, Any] | None = None) -> dict[str, int]:
    """The full option set for ``name``: the defaults overridden by ``options``, validated.

    Raises ValueError naming an unknown architecture or option and listing the valid ones, or a
    value that is not a positive integer.
    """
    if name not in ARCHITECTURE_DEFAULTS:
        raise ValueError(
            f"unknown architecture {name!r}; valid architectures: {', '.join(sorted(ARCHITECTURE_DEFAULTS))}"
        )
    defaults = ARCHITECTURE_DEFAULTS[name]
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for architecture {name!r}; "
            f"valid options: {', '.join(sorted(defaults))}"
        )
    merged = {**defaults, **options}
    for key, value in merged.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"option {key!r} of architecture {name!r} must be a positive integer, got {value!r}"
            )
    return merged


@dataclass(frozen=True)
class TrainingConfig:
    """One training run: Adam with a one-cycle learning-rate schedule, cross-entropy loss."""

    epochs: int
    lr: float
    batch_size: int
    label_noise: float = 0.0
    seed: int = 0
    # Train on the samples of the digits 0 .. classes - 1 only (a base model of part of the task;
    # the network keeps its 10 outputs and is tested on all ten digits).
    classes: int = 10
    # Stop after this many epochs of the ``epochs``-long schedule (a checkpoint of that run: its
    # learning rate is the run's at that point); 0: the whole run.
    stop_epoch: int = 0


# The training option columns of a train: row and their types (the fields of TrainingConfig).
TRAINING_OPTION_TYPES: dict[str, type] = {
    "label_noise": float, "epochs": int, "lr": float, "batch_size": int, "seed": int,
    "classes": int, "stop_epoch": int,
}

# Per-architecture defaults, measured on 2 cores with 1 thread: the MLP's 80 epochs let a
# 512-wide MLP memorise random labels (>= 95 % train accuracy); the CNN reaches ~98 % test
# accuracy in 10 epochs, each of which costs ~16x an MLP epoch; 40 epochs let the LeNet
# (32 channels, width 512) memorise random labels (98.5 % train accuracy; lr 6e-3 fails to learn).
TRAINING_DEFAULTS: dict[str, TrainingConfig] = {
    "mlp": TrainingConfig(epochs=80, lr=3e-3, batch_size=64),
    "cnn": TrainingConfig(epochs=10, lr=3e-3, batch_size=64),
    "lenet": TrainingConfig(epochs=40, lr=3e-3, batch_size=64),
}
