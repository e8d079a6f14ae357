"""A zoo sheet's rows as typed, checked objects (ZooRow), parsed once when the Snakefile is read.

A row is a model id, its series, its ``source`` (a kind of zooscope.sources.registry and its
argument), the reported accuracy, the option columns the kind declares, and the columns of the
workflow: ``data``/``data_samples`` (the Jacobian stage), ``shards`` (esd jobs), ``base`` (the
row a model was fine-tuned from, or an adapter's: docs/finetunes.md) and ``step`` (the training
step of a checkpoint: the rows of a series with steps are one training run's trajectory). Every check a row needs
happens here, without torch: the source against its kind's pattern, each option column against the
options that kind declares (with the kind's own check of the values), ``data`` only on kinds whose
models can be rebuilt, paths (``file:`` sources, data) resolved against the sheet's folder, once,
and, across the rows (:func:`base_problems`), every base a row of the sheet, no cycle of bases,
a base for every adapter, and (:func:`step_problems`) a step for every row of a trajectory series,
none twice. Rules pass a row's plain form (:meth:`ZooRow.as_dict`); scripts rebuild it.
"""
from __future__ import annotations

import csv
import math
import numbers
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from zooscope import config
from zooscope.config import ConfigError
from zooscope.sources.base import SourceKind
from zooscope.sources.registry import KINDS, claiming_kind, option_types, rebuildable, source_pattern
from zooscope.sources.selection import SELECTION_COLUMNS, Selection, parse_selection

# The columns every sheet has; the Jacobian stage's (data, data_samples), the esd stage's
# (shards, and base: the model's updates against it), the trajectory stage's (step). Any other column
# is an option of the row's source kind.
REQUIRED_COLUMNS = ("model", "series", "source", "accuracy")
WORKFLOW_COLUMNS = ("data", "data_samples", "shards", "base", "step")
# How a model's weights are taken in (docs/intake.md): which wrapper of a PyTorch checkpoint
# (file: sources) and which layers are analysed (every source). Not options of a kind.
CHECKPOINT_KEY = "checkpoint_key"
INTAKE_COLUMNS = (CHECKPOINT_KEY, *SELECTION_COLUMNS)
# The built-in data set of the Jacobian stage (zooscope.jacobian.data): the demo's digits test split.
DIGITS = "digits"
# Samples of a data set used when data_samples is empty.
DEFAULT_SAMPLES = 512
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class RowError(ValueError):
    """A zoo-sheet row that is invalid; the message names the model and what to fix."""


@dataclass(frozen=True)
class Source:
    """Where a model's weights come from: ``kind:argument`` (``text``, as the sheet writes it).
    ``path``: for a kind with a local path (file:), the argument resolved against the sheet's folder."""

    kind: str
    argument: str
    text: str
    path: Path | None = None

    @property
    def spec(self) -> SourceKind:
        return KINDS[self.kind]

    def local_inputs(self) -> list[Path]:
        """The files on disk whose change refetches the model: the path, or its kind's files in it."""
        if self.path is None:
            return []
        return [self.path / name for name in self.spec.local_files] or [self.path]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "argument": self.argument, "text": self.text,
                "path": None if self.path is None else str(self.path)}

    @classmethod
    def from_dict(cls, plain: Mapping[str, Any]) -> Source:
        return cls(kind=plain["kind"], argument=plain["argument"], text=plain["text"],
                   path=None if plain["path"] is None else Path(plain["path"]))


@dataclass(frozen=True)
class DataSpec:
    """A row's data set for the Jacobian stage: ``name`` as the sheet writes it, its ``path``
    resolved against the sheet's folder (None: the built-in digits), at most ``samples`` samples."""

    name: str
    path: Path | None
    samples: int = DEFAULT_SAMPLES

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": None if self.path is None else str(self.path), "samples": self.samples}

    @classmethod
    def from_dict(cls, plain: Mapping[str, Any]) -> DataSpec:
        return cls(name=plain["name"], path=None if plain["path"] is None else Path(plain["path"]),
                   samples=plain["samples"])


@dataclass(frozen=True)
class ZooRow:
    """One model of a zoo sheet, checked (module docstring)."""

    model: str
    series: str | None
    source: Source
    accuracy: float | None = None
    options: Mapping[str, int | float] = field(default_factory=dict)
    data: DataSpec | None = None
    shards: int | None = None  # the column; the count the workflow uses: zooscope.resources.model_shards
    checkpoint_key: str | None = None  # file: only (zooscope.sources.checkpoints)
    selection: Selection = Selection()  # the row's own cells; config select fills the rest at fetch
    base: str | None = None  # the model id of another row (read_zoo_sheet checks it is one)
    step: float | None = None  # the checkpoint's training step (docs/finetunes.md, "Training trajectories")

    @property
    def adapter(self) -> bool:
        """Whether the model is an adapter of its base (fetched onto the base's fetched model)."""
        return self.source.spec.adapter

    def as_dict(self) -> dict[str, Any]:
        """The plain (JSON) form, for a rule's params; :meth:`from_dict` rebuilds the row."""
        return {
            "model": self.model, "series": self.series, "accuracy": self.accuracy, "options": dict(self.options),
            "source": self.source.as_dict(), "data": None if self.data is None else self.data.as_dict(),
            "shards": self.shards, "base": self.base, "step": self.step,
            "checkpoint_key": self.checkpoint_key,
            "selection": self.selection.to_meta(),
        }

    def fetch_form(self) -> dict[str, Any]:
        """The plain form of what the fetch job's outputs depend on: the row without its data set,
        shards, step and, but for an adapter, its base (a model given a data set, a shard count, a
        step or a base must not be refetched, or retrained)."""
        return replace(self, data=None, shards=None, step=None, base=self.base if self.adapter else None).as_dict()

    @classmethod
    def from_dict(cls, plain: Mapping[str, Any]) -> ZooRow:
        data = plain.get("data")
        return cls(
            model=plain["model"], series=plain.get("series"), source=Source.from_dict(plain["source"]),
            accuracy=plain.get("accuracy"), options=dict(plain.get("options") or {}),
            data=None if data is None else DataSpec.from_dict(data), shards=plain.get("shards"),
            checkpoint_key=plain.get("checkpoint_key"),
            selection=parse_selection(plain.get("selection") or {}),
            base=plain.get("base"), step=plain.get("step"),
        )

    def with_selection_defaults(self, defaults: Selection | Mapping[str, Any]) -> ZooRow:
        """The row with config ``select`` filling the selection keys its cells leave unset."""
        if not isinstance(defaults, Selection):
            try:
                defaults = parse_selection(defaults)
            except ValueError as error:
                raise RowError(f"config select: {error}") from None
        return replace(self, selection=self.selection.with_defaults(defaults))


# ----------------------------------------------------------------------------- one row


def parse_source(text: Any, model: str | None = None) -> tuple[str, str]:
    """Split a sheet's ``source`` cell into (kind, argument), e.g. "train:mlp" -> ("train", "mlp"),
    checking the argument against the kind's pattern (also for rows that skipped the schema)."""
    kind, sep, argument = str(text).strip().partition(":")
    where = f" for model {model!r}" if model is not None else ""
    if not sep or kind not in KINDS or not argument.strip():
        raise RowError(f"unknown source {text!r}{where}; {source_kinds(kind)}")
    argument = argument.strip()
    spec = KINDS[kind]
    if not spec.matches(argument):
        raise RowError(f"invalid source {text!r}{where}; expected {spec.syntax}, e.g. {spec.example}")
    return kind, argument


def source_kinds(kind: str = "") -> str:
    """The sources a sheet may name, each with an example; the closest kind to ``kind`` first."""
    import difflib

    close = difflib.get_close_matches(kind, list(KINDS), n=1, cutoff=0.6) if kind else []
    hint = f"did you mean {KINDS[close[0]].syntax} (e.g. {KINDS[close[0]].example})? " if close else ""
    return hint + "a source is one of: " + ", ".join(f"{k.syntax} (e.g. {k.example})" for k in KINDS.values())


def source_problem(text: Any) -> str:
    """Why a ``source`` cell is invalid, in words (the schema's own message is its regex)."""
    try:
        parse_source(text)
    except RowError as error:
        return str(error)
    return f"invalid source {text!r}; {source_kinds()}"


def resolve_path(text: str, sheet_dir: str | Path) -> Path:
    """A path a sheet names (a file: source, a data set): a relative one is relative to the sheet's
    folder, not the working directory; ``~`` is the user's home. The one resolver of sheet paths."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else Path(sheet_dir) / path


def parse_row(row: Mapping[str, Any], sheet_dir: str | Path = ".") -> ZooRow:
    """A sheet row (column -> cell, as csv or pandas read it) as a checked ZooRow; RowError if not."""
    model = model_id(row)
    kind, argument = parse_source(row.get("source", ""), model)
    spec = KINDS[kind]
    path = resolve_path(argument, sheet_dir) if spec.local_path else None
    if path is not None and (claimed := claiming_kind(path)) is not None:
        kind, spec = claimed, KINDS[claimed]  # e.g. a file: folder holding an adapter is a peft: source
    source = Source(kind, argument, str(row["source"]).strip(), path)
    options = parse_options(row, spec, model)
    if spec.check is not None:
        try:
            spec.check(argument, options)
        except ValueError as error:
            raise RowError(f"model {model!r}: {error}") from None
    key = None if is_empty(row.get(CHECKPOINT_KEY)) else str(row[CHECKPOINT_KEY]).strip()
    if key is not None and kind != "file":
        raise RowError(f"model {model!r}: column {CHECKPOINT_KEY!r} applies to file: sources only; "
                       "leave the cell empty")
    try:
        selection = parse_selection(row)
    except ValueError as error:
        raise RowError(f"model {model!r}: {error}") from None
    return ZooRow(
        model=model, series=None if is_empty(row.get("series")) else str(row["series"]), source=source,
        accuracy=sheet_accuracy(row), options=options, data=parse_data(row, spec, model, sheet_dir, source.path),
        shards=None if is_empty(row.get("shards")) else positive(row["shards"], model, "shards"),
        checkpoint_key=key, selection=selection, base=parse_base(row.get("base"), model),
        step=None if is_empty(row.get("step")) else convert(row["step"], float, model, "step"),
    )


def parse_base(value: Any, model: str) -> str | None:
    """The row's ``base`` cell: None, or a model id (that it names a row: :func:`base_problems`)."""
    if is_empty(value):
        return None
    base = str(value).strip()
    if not MODEL_ID.fullmatch(base):
        raise RowError(f"model {model!r}: column 'base' must be a model id of this sheet, got {value!r}")
    return base


def model_id(row: Mapping[str, Any]) -> str:
    """The row's model id, checked: it becomes a directory name in every later stage."""
    model = row.get("model")
    if not isinstance(model, str) or not MODEL_ID.fullmatch(model):
        raise RowError(
            f"invalid model id {model!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return model


def parse_options(row: Mapping[str, Any], spec: SourceKind, model: Any = None) -> dict[str, int | float]:
    """The row's non-empty option columns, typed; unknown ones and ones the kind does not take are
    errors (a kind that ignores options gets none)."""
    options: dict[str, int | float] = {}
    if spec.ignores_options:
        return options
    types = option_types()
    for column, value in row.items():
        if column in (*REQUIRED_COLUMNS, *WORKFLOW_COLUMNS, *INTAKE_COLUMNS) or is_empty(value):
            continue
        if column not in types:
            raise RowError(
                f"model {model!r}: unknown option column {column!r}; valid option columns: {', '.join(types)}"
            )
        if column not in spec.options:
            valid = f"valid there: {', '.join(spec.options)}" if spec.options else "they take none"
            raise RowError(f"model {model!r}: option column {column!r} does not apply to {spec.name}: sources; {valid}")
        options[column] = convert(value, spec.options[column], model, column)
    return options


def parse_data(row: Mapping[str, Any], spec: SourceKind, model: str, sheet_dir: str | Path,
               path: Path | None = None) -> DataSpec | None:
    """The row's data set, or None; only a row whose model can be rebuilt (its kind, with its
    resolved ``path``) may have one."""
    if is_empty(row.get("data")):
        return None
    if not spec.can_rebuild(path):
        raise RowError(
            f"model {model!r}: column 'data' (the Jacobian stage) needs a model that can be run again, "
            f"from a {', '.join(kind + ':' for kind in rebuildable())} source (file: only as a model folder "
            f"whose config.json names a transformers image classifier, architectures ...ForImageClassification: "
            f"token inputs are not supported), not {row['source']}; leave the cell empty"
        )
    samples = row.get("data_samples")
    return data_spec(row["data"], sheet_dir,
                     DEFAULT_SAMPLES if is_empty(samples) else positive(samples, model, "data_samples"))


def data_spec(name: str, sheet_dir: str | Path = ".", samples: int = DEFAULT_SAMPLES) -> DataSpec:
    """The data set a sheet names: the built-in digits, or a path resolved against the sheet's folder."""
    name = str(name).strip()
    return DataSpec(name=name, path=None if name == DIGITS else resolve_path(name, sheet_dir), samples=samples)


def is_empty(value: Any) -> bool:
    """Whether a sheet cell is unset: None, blank text, or NaN/NA (pandas' empty cells)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return math.isnan(float(value))
    return type(value).__name__ in ("NAType", "NaTType")


def convert(value: Any, kind: type, model: Any, column: str) -> int | float:
    """A cell as ``int`` or finite ``float``; "64", 64 and 64.0 (pandas) are all the integer 64."""
    number: float | None = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or (kind is int and not number.is_integer()):
        raise RowError(
            f"model {model!r}: column {column!r} must be {'an integer' if kind is int else 'a number'}, "
            f"got {value!r}"
        )
    return int(number) if kind is int else number


def positive(value: Any, model: Any, column: str) -> int:
    number = int(convert(value, int, model, column))
    if number < 1:
        raise RowError(f"model {model!r}: column {column!r} must be a positive integer, got {value!r}")
    return number


def sheet_accuracy(row: Mapping[str, Any]) -> float | None:
    """The sheet's reported top-1 accuracy in percent, or None when the cell is empty."""
    value = row.get("accuracy")
    if is_empty(value):
        return None
    accuracy = convert(value, float, row.get("model"), "accuracy")
    if not 0.0 <= accuracy <= 100.0:
        raise RowError(
            f"model {row.get('model')!r}: column 'accuracy' must be a percentage in [0, 100], got {value!r}"
        )
    return accuracy


# ----------------------------------------------------------------------------- a sheet


def zoo_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The zoo schema (schemas/zoo.schema.yaml) with its source pattern from the registry."""
    properties = dict(schema["properties"])
    syntaxes = [kind.syntax for kind in KINDS.values()]
    properties["source"] = {
        **properties["source"], "pattern": source_pattern(),
        "description": f"where the weights come from: {', '.join(syntaxes[:-1])} or {syntaxes[-1]}",
    }
    return {**schema, "properties": properties}


def read_zoo_sheet(path: str | Path, schema: Mapping[str, Any]) -> list[ZooRow]:
    """Read, validate and parse a zoo sheet (TSV, one model per row, '#' lines are comments).

    Every problem of every row is reported at once, each with its row number and model.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"zoo sheet {path} does not exist; set 'zoo:' in config.yaml or pass --config zoo=PATH")
    with open(path, encoding="utf-8", newline="") as handle:
        lines = [line for line in handle if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines, delimiter="\t")
    columns = reader.fieldnames or []
    missing = [column for column in REQUIRED_COLUMNS if column not in columns]
    if missing:
        raise ConfigError(
            f"{path}: missing column(s) {', '.join(missing)}; a zoo sheet is a TSV with at least the "
            f"columns {', '.join(REQUIRED_COLUMNS)} (found: {', '.join(columns) or 'none'})"
        )
    import jsonschema

    validator = jsonschema.Draft202012Validator(zoo_schema(schema))
    rows: list[ZooRow] = []
    numbers: dict[str, int] = {}  # a parsed row's model -> its row number
    seen: dict[str, int] = {}
    problems: list[str] = []
    for number, raw in enumerate(reader, start=2):  # row 1 is the header
        if None in raw:
            problems.append(f"row {number}: more cells than header columns")
            continue
        cells = {key: (value.strip() if value and value.strip() else None) for key, value in raw.items()}
        cells["accuracy"] = _accuracy_cell(cells.get("accuracy"))
        label = f"row {number} (model '{cells.get('model')}')"
        errors = sorted(validator.iter_errors(cells), key=str)
        problems += [f"{label}: {source_problem(cells['source']) if list(error.absolute_path) == ['source'] else config.describe(error)}"
                     for error in errors]
        model = cells.get("model")
        if model in seen:
            problems.append(f"{label}: duplicate model id, first used in row {seen[model]}")
        elif model:
            seen[model] = number
        if not errors:
            try:
                rows.append(parse_row(cells, path.parent))
                numbers.setdefault(rows[-1].model, number)
            except RowError as error:
                problems.append(f"row {number}: {error}")
    problems += base_problems(rows, numbers, set(seen))
    problems += step_problems(rows, numbers)
    if problems:
        raise ConfigError(f"{path}: invalid zoo sheet:\n" + "\n".join(f"  - {p}" for p in problems))
    if not rows:
        raise ConfigError(f"{path}: the zoo sheet has no models")
    return rows


def base_problems(rows: list[ZooRow], numbers: Mapping[str, int], models: set[str]) -> list[str]:
    """The problems of the zoo column ``base`` (docs/finetunes.md), one line per row: a base that
    names no row of the sheet (``models``: every model id it has, its invalid rows' too) or the row
    itself, a cycle of bases, an adapter without a base. Whether a base shares layers with its
    model is known once both are fetched (zooscope.spectra.delta_esd)."""
    bases = {row.model: row.base for row in rows}
    problems = []
    for row in rows:
        label = f"row {numbers[row.model]} (model '{row.model}')"
        if row.base is None:
            if row.adapter:
                what = ("a finetune: source" if row.source.kind == "finetune"
                        else "an adapter (peft: source or adapter folder)")
                problems.append(f"{label}: {what} needs the model it adapts in the column 'base'")
        elif row.base == row.model:
            problems.append(f"{label}: column 'base' names the model itself; name the model it was fine-tuned from")
        elif row.base not in models:
            problems.append(f"{label}: column 'base' names '{row.base}', which is no model of this sheet; add a row "
                            "for the base model or correct the name")
        else:
            chain, current = [row.model], row.base
            while current and current not in chain:
                chain.append(current)
                current = bases.get(current)
            if current == row.model:
                problems.append(f"{label}: its bases form a cycle ({' -> '.join([*chain, row.model])}); one of them "
                                "must have no base")
    return problems


def step_problems(rows: list[ZooRow], numbers: Mapping[str, int]) -> list[str]:
    """The problems of the zoo column ``step``, one line per row: a series with a step in any row is
    one training run (docs/finetunes.md), so every row of it needs a step, and no step may come twice
    in it; a step needs a series."""
    problems = []
    trajectories = {row.series for row in rows if row.step is not None}
    first: dict[tuple[str | None, float], str] = {}  # (series, step) -> the first row's label
    for row in rows:
        label = f"row {numbers[row.model]} (model '{row.model}')"
        if row.step is None:
            if row.series in trajectories:
                problems.append(f"{label}: series '{row.series}' is a training trajectory (other rows have a "
                                "'step'); give this checkpoint its step, or put the model in another series")
        elif row.series is None:
            problems.append(f"{label}: column 'step' needs a series (the training run the checkpoint belongs to)")
        elif (row.series, row.step) in first:
            problems.append(f"{label}: step {row.step:g} of series '{row.series}' is already the step of "
                            f"{first[row.series, row.step]}; each checkpoint of a run has its own step")
        else:
            first[row.series, row.step] = label
    return problems


def trajectory_series(rows: list[ZooRow]) -> dict[str, list[str]]:
    """The series that are training trajectories (their rows have steps): series -> its models in
    step order (the sheet's order breaks no tie: steps are unique in a series)."""
    series: dict[str, list[ZooRow]] = {}
    for row in rows:
        if row.step is not None and row.series is not None:
            series.setdefault(row.series, []).append(row)
    return {name: [row.model for row in sorted(members, key=lambda row: row.step)]
            for name, members in sorted(series.items())}


def _accuracy_cell(text: str | None) -> Any:
    try:
        return None if text is None else float(text)
    except ValueError:
        return text  # left as text so the schema reports it as a type error with its row
