"""``random:ARCH``: a demo architecture at a seeded random initialisation, the untrained null baseline.

Not trained, so of the training options only the initialisation ``seed`` applies. Its accuracy is
the sheet's if given, else measured on the digits test split (about chance). Rebuildable, as train:.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from zooscope.sources.base import Fetched, SourceKind
from zooscope.sources.built import (
    ARCHITECTURE_OPTION_TYPES,
    arch_options,
    measured_source,
    module_parameters,
    unanalysed_state,
)

if TYPE_CHECKING:
    from zooscope.zoo import ZooRow


def fetch(row: ZooRow, threads: int) -> Fetched:
    """Build the architecture at its seeded initialisation."""
    from zooscope.layers import layers_from_module
    from zooscope.models import architectures, digits

    arch, accuracy = row.source.argument, row.accuracy
    architecture = arch_options(arch, row.options)
    seed = row.options.get("seed", 0)
    with digits.deterministic_torch(seed, threads):
        network = architectures.build_architecture(arch, architecture)
        measured = digits.held_out_accuracy(network) if accuracy is None else None
    layers = layers_from_module(network)
    return Fetched(
        layers=layers,
        other_tensors=unanalysed_state(network, layers),
        num_params=module_parameters(network),
        accuracy=accuracy if accuracy is not None else measured,
        accuracy_source="zoo sheet" if accuracy is not None else measured_source(),
        extra_meta={"architecture": {"name": arch, "options": architecture}, "init_seed": seed},
    )


def check(arch: str, options) -> None:
    """The sheet-time check: the architecture, its options (ValueError)."""
    arch_options(arch, options)


KIND = SourceKind(
    name="random", syntax="random:ARCH", example="random:cnn", argument=r".+", fetch=fetch,
    options={**ARCHITECTURE_OPTION_TYPES, "seed": int},
    check=check,
    rebuildable=True,
)
