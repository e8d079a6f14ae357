"""Layer selection: which of a model's layers are analysed (docs/intake.md, "Layer selection").

Set for the whole zoo in config.yaml (``select:``) and per model by zoo columns of the same names,
a non-empty cell replacing the config's value of that key:

- ``include``/``exclude``: layer-name patterns (shell-style, ``fnmatch``: ``*.mlp.*``, ``lm_head``),
  comma-separated in a cell; with ``include`` only matching layers are kept, ``exclude`` drops
  matching ones.
- ``include_types``/``exclude_types``: layer types (Linear, Conv1d, Conv2d, Embedding).
- ``max_evals``: leave out a layer whose matrices have more eigenvalues than this (M, the short
  side); ``max_dim``: one whose long side N is larger (e.g. a 128k-token embedding).

N and M are counted as zooscope.resources.layer_matrices does (a convolution as its kernel
slices). A layer left out is never read; it is recorded with its reason (``filtered`` or ``over a
cap``) in tensors.json and the coverage table, never dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from fnmatch import fnmatchcase
from typing import Any, Mapping

from zooscope.resources import layer_matrices

PATTERN_KEYS = ("include", "exclude")
TYPE_KEYS = ("include_types", "exclude_types")
CAP_KEYS = ("max_evals", "max_dim")
# Zoo-sheet columns (and config select: keys) of the selection.
SELECTION_COLUMNS = (*PATTERN_KEYS, *TYPE_KEYS, *CAP_KEYS)


@dataclass(frozen=True)
class Selection:
    """Which layers are analysed; called as ``selection(name, type, shape)``: None to analyse the
    layer, else (reason, detail) of why it is left out."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_types: tuple[str, ...] = ()
    exclude_types: tuple[str, ...] = ()
    max_evals: int | None = None
    max_dim: int | None = None

    def __call__(self, name: str, kind: str, shape: tuple) -> tuple[str, str] | None:
        if self.include and not any(fnmatchcase(name, pattern) for pattern in self.include):
            return "filtered", f"matches no include pattern ({','.join(self.include)})"
        excluded = next((pattern for pattern in self.exclude if fnmatchcase(name, pattern)), None)
        if excluded:
            return "filtered", f"matches exclude pattern {excluded}"
        if self.include_types and kind not in self.include_types:
            return "filtered", f"type {kind} not in include_types ({','.join(self.include_types)})"
        if kind in self.exclude_types:
            return "filtered", f"type {kind} in exclude_types"
        _, n, m = layer_matrices(shape)
        if self.max_evals is not None and m > self.max_evals:
            return "over a cap", f"{m} eigenvalues per matrix > max_evals={self.max_evals}"
        if self.max_dim is not None and n > self.max_dim:
            return "over a cap", f"largest dimension {n} > max_dim={self.max_dim}"
        return None

    def with_defaults(self, defaults: Selection) -> Selection:
        """This selection, each key that is not set taken from ``defaults``."""
        return replace(self, **{f.name: getattr(defaults, f.name) for f in fields(self)
                                if getattr(self, f.name) in ((), None)})

    def to_meta(self) -> dict[str, Any]:
        """The keys that are set, for meta.json (an empty selection: {})."""
        return {f.name: list(value) if isinstance(value, tuple) else value
                for f in fields(self) if (value := getattr(self, f.name)) not in ((), None)}


def parse_selection(cells: Mapping[str, Any]) -> Selection:
    """A selection from zoo-sheet cells or config ``select`` (lists, or comma-separated text in a
    cell; empty cells are not set). ValueError for an unknown layer type or a cap below 1."""
    values: dict[str, Any] = {}
    for key in SELECTION_COLUMNS:
        value = cells.get(key)
        if key in CAP_KEYS:
            values[key] = None if _empty(value) else _positive_int(value, key)
        else:
            items = value.split(",") if isinstance(value, str) else list(value or ())
            values[key] = tuple(str(item).strip() for item in items if str(item).strip())
    kinds = [kind for key in TYPE_KEYS for kind in values[key]]
    if kinds:
        from zooscope.layers import MODULE_TYPES  # (numpy: only for a sheet that names types)

        unknown = [kind for kind in kinds if kind not in MODULE_TYPES]
        if unknown:
            raise ValueError(f"include_types/exclude_types name unknown layer type(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(MODULE_TYPES)}")
    return Selection(**values)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and value != value)


def _positive_int(value: Any, key: str) -> int:
    try:
        number = float(str(value).strip())
    except ValueError:
        number = 0.0
    if not number.is_integer() or number < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return int(number)
