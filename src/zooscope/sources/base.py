"""What every source kind shares: its declaration (SourceKind), the fetched model (Fetched), FetchError.

Torch-free: the registry (zooscope.sources.registry) and the zoo-sheet parser (zooscope.zoo)
import it when the Snakefile is parsed. How to add a kind: docs/sources.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from torch import Tensor

    from zooscope.layers import LayerList
    from zooscope.zoo import ZooRow

# How a kind fetches one row: the parsed row and the job's threads -> the model in common form.
# An adapter kind's fetch also takes the folder of its base's fetched model (SourceKind.adapter).
Fetcher = Callable[["ZooRow", int], "Fetched"] | Callable[["ZooRow", int, Path], "Fetched"]
# A kind's check of a row's argument and typed options; raises ValueError with the reason.
RowCheck = Callable[[str, Mapping[str, Any]], None]


class FetchError(ValueError):
    """A zoo-sheet row that cannot be fetched; the message names the model and what to fix."""


@dataclass(frozen=True)
class SourceKind:
    """One kind of source, as a zoo sheet writes it: ``NAME:ARGUMENT``.

    ``argument`` is the regular expression the argument must match in full (the zoo schema's
    source pattern is built from every kind's: zooscope.sources.registry.source_pattern), so a
    sheet cannot smuggle a path or URL into a library call. ``options`` are the option columns the
    kind takes, with their types; ``ignores_options`` makes the row's option columns irrelevant
    (no error, no options). ``check`` validates the argument with the typed options when the
    sheet is parsed (no torch). ``rebuildable``: a fetched model can be run again as a module, so
    the data-dependent Jacobian stage can take it (a row's ``data`` column): True, or a check of
    the row's resolved path (file: is rebuildable only as a model folder whose config.json names
    a transformers image classifier).
    ``rebuild``: a fresh module of a fetched model's architecture, from its meta.json (its weights
    are then loaded from model.safetensors: zooscope.jacobian.rebuild). ``local_path``: the
    argument is a path, resolved against the sheet's folder once, when the row is parsed;
    ``local_files``: the files of that path (a folder) whose change refetches the model (empty:
    the path itself). ``adapter``: a model of the kind is its row's ``base`` changed (a LoRA
    adapter): the row needs a base, and fetch gets the base's fetched folder as a third argument.
    ``claims``: a path of a ``local_path`` kind (file:) that is really of this kind (a folder
    holding an adapter_config.json), decided when the row is parsed.
    """

    name: str
    syntax: str
    example: str
    argument: str
    fetch: Fetcher
    options: Mapping[str, type] = field(default_factory=dict)
    ignores_options: bool = False
    check: RowCheck | None = None
    rebuildable: bool | Callable[[Path | None], bool] = False
    local_path: bool = False
    rebuild: Callable[[Mapping[str, Any]], Any] | None = None
    local_files: tuple[str, ...] = ()
    adapter: bool = False
    claims: Callable[[Path], bool] | None = None

    def matches(self, argument: str) -> bool:
        return re.fullmatch(self.argument, argument) is not None

    def can_rebuild(self, path: Path | None = None) -> bool:
        """Whether a row of this kind (with this resolved path) can be run again as a module."""
        return self.rebuildable(path) if callable(self.rebuildable) else self.rebuildable


@dataclass
class Fetched:
    """A model in the common form, before it is written: weights plus what meta.json records."""

    layers: LayerList
    num_params: int
    accuracy: float | None
    accuracy_source: str | None
    extra_meta: dict[str, Any] = field(default_factory=dict)
    # The rest of a rebuildable model's state (biases, norms, buffers), stored after the analysed
    # weights so that the Jacobian stage runs the fetched model instead of fetching or training it
    # again; a torch dict, or a lazy store of a checkpoint's tensors.
    other_tensors: Mapping[str, Tensor] = field(default_factory=dict)
    # Every tensor of the checkpoint or module state, and what became of it (sources.coverage).
    inventory: list[dict[str, Any]] = field(default_factory=list)


CONVERT_HINT = (
    "convert it to safetensors where you trust it, e.g. "
    "safetensors.torch.save_file(model.state_dict(), 'model.safetensors'), "
    "and point the zoo sheet's source at that file"
)
