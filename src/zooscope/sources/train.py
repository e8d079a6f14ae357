"""``train:ARCH``: a demo architecture (zooscope.models) trained here on the digits data.

Its options are the architecture's (width, depth, channels) and training's (label_noise, epochs,
lr, batch_size, seed); its accuracy is the measured test accuracy. Rebuildable: fetch stores the
module's whole state, so the Jacobian stage runs it again (zooscope.jacobian.rebuild).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from zooscope.models.catalog import TRAINING_OPTION_TYPES
from zooscope.sources.base import Fetched, SourceKind
from zooscope.sources.built import (
    ARCHITECTURE_OPTION_TYPES,
    measured_source,
    module_parameters,
    training_setup,
    unanalysed_state,
)

if TYPE_CHECKING:
    from zooscope.zoo import ZooRow

log = logging.getLogger(__name__)


def fetch(row: ZooRow, threads: int) -> Fetched:
    """Build the architecture and train it on digits; its accuracy is the measured test accuracy."""
    from zooscope.layers import layers_from_module
    from zooscope.models import architectures, digits

    model, arch = row.model, row.source.argument
    if row.accuracy is not None:
        log.warning(
            "model %s: ignoring the sheet's accuracy %s: a train: model's accuracy is measured",
            model, row.accuracy,
        )
    architecture, config = training_setup(arch, row.options)
    with digits.deterministic_torch(config.seed, threads):
        network = architectures.build_architecture(arch, architecture)
    result = digits.train(network, config, threads=threads)
    layers = layers_from_module(network)
    return Fetched(
        layers=layers,
        other_tensors=unanalysed_state(network, layers),
        num_params=module_parameters(network),
        accuracy=result.test_accuracy,
        accuracy_source=measured_source(),
        extra_meta={
            "architecture": {"name": arch, "options": architecture},
            "training": result.to_meta(),
        },
    )


def check(arch: str, options) -> None:
    """The sheet-time check: the architecture, its options and the training values (ValueError)."""
    training_setup(arch, options)


KIND = SourceKind(
    name="train", syntax="train:ARCH", example="train:mlp", argument=r".+", fetch=fetch,
    options={**ARCHITECTURE_OPTION_TYPES, **TRAINING_OPTION_TYPES},
    check=check,
    rebuildable=True,
)
