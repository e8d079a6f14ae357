"""The source kinds a zoo sheet may name, one module each (docs/sources.md: how to add one).

Every kind module declares ``KIND`` (a zooscope.sources.base.SourceKind: its syntax, argument
pattern, options, whether its models can be rebuilt, and its fetch). The zoo sheet's schema takes
its source pattern from here (:func:`source_pattern`), the sheet parser (zooscope.zoo) its checks,
and the fetch stage (zooscope.sources.fetch) its dispatch. Torch-free: the Snakefile imports it.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Mapping

from zooscope.sources.base import SourceKind

# The registry: one line per kind (the module that declares its KIND), in the order sheets and
# messages list them.
KIND_MODULES = (
    "zooscope.sources.file",
    "zooscope.sources.train",
    "zooscope.sources.random",
    "zooscope.sources.peft",
    "zooscope.sources.finetune",
    "zooscope.sources.torchvision",
    "zooscope.sources.timm",
    "zooscope.sources.hf",
)

KINDS: Mapping[str, SourceKind] = {
    kind.name: kind for kind in (importlib.import_module(module).KIND for module in KIND_MODULES)
}


def source_pattern() -> str:
    """The zoo schema's pattern of a ``source`` cell: ``NAME:ARGUMENT`` of any registered kind."""
    return "^(" + "|".join(f"{name}:(?:{kind.argument})" for name, kind in KINDS.items()) + ")$"


def option_types() -> dict[str, type]:
    """Every option column any kind takes, and its type (in registry order)."""
    types: dict[str, type] = {}
    for kind in KINDS.values():
        for column, kind_type in kind.options.items():
            types.setdefault(column, kind_type)
    return types


def rebuildable() -> tuple[str, ...]:
    """The kinds whose fetched models can be run again (the Jacobian stage's)."""
    return tuple(name for name, kind in KINDS.items() if kind.rebuildable)


def claiming_kind(path: Path) -> str | None:
    """The kind that claims a local path of another kind (a file: folder holding a PEFT adapter is
    a peft: source), or None."""
    return next((name for name, kind in KINDS.items() if kind.claims is not None and kind.claims(path)), None)
