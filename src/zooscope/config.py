"""Validation of the workflow configuration and of zoo sheets against the JSON schemas in schemas/.

Kept free of heavy imports: the Snakefile calls it at parse time, which every cluster job repeats.
Errors name the file, the row and the field, so a user can fix a sheet without reading code.
"""
from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REQUIRED_COLUMNS = ("model", "series", "source", "accuracy")


class ConfigError(ValueError):
    """A configuration file or zoo sheet that does not follow its schema."""


def load_schema(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _fill_defaults(instance: dict, schema: dict) -> None:
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(instance[key], sub)


def _describe(error: jsonschema.ValidationError) -> str:
    field = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "required":
        return error.message
    if error.validator == "additionalProperties":
        return f"unknown key: {error.message}"
    return f"field '{field}': {error.message}"


def validate_config(config: dict, schema: dict, *, source: str = "config.yaml") -> dict:
    """Return a copy of ``config`` with schema defaults filled in; raise ConfigError otherwise."""
    config = copy.deepcopy(dict(config))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=str)
    if errors:
        lines = "\n".join(f"  - {_describe(error)}" for error in errors)
        raise ConfigError(f"{source}: invalid configuration:\n{lines}")
    _fill_defaults(config, schema)
    return config


def _parse_accuracy(text: str | None) -> Any:
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text  # left as text so the schema reports it as a type error with its row


def read_zoo_sheet(path: str | Path, schema: dict) -> list[dict]:
    """Read and validate a zoo sheet (TSV, one model per row, '#' lines are comments).

    Returns one dict per row: the required columns (accuracy as float or None) and the extra
    option columns (str, or None where the cell is empty).
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
    validator = jsonschema.Draft202012Validator(schema)
    rows: list[dict] = []
    numbers: list[int] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    for number, raw in enumerate(reader, start=2):  # row 1 is the header
        if None in raw:
            problems.append(f"row {number}: more cells than header columns")
            continue
        row = {key: (value.strip() if value and value.strip() else None) for key, value in raw.items()}
        row["accuracy"] = _parse_accuracy(raw.get("accuracy"))
        label = f"row {number} (model '{row.get('model')}')"
        for error in sorted(validator.iter_errors(row), key=str):
            problems.append(f"{label}: {_describe(error)}")
        model = row.get("model")
        if model in seen:
            problems.append(f"{label}: duplicate model id, first used in row {seen[model]}")
        elif model:
            seen[model] = number
        rows.append(row)
        numbers.append(number)
    problems += base_problems(list(zip(numbers, rows)), path.parent)
    if problems:
        raise ConfigError(f"{path}: invalid zoo sheet:\n" + "\n".join(f"  - {p}" for p in problems))
    if not rows:
        raise ConfigError(f"{path}: the zoo sheet has no models")
    return rows


# The file that makes a folder a PEFT adapter (zooscope.sources.peft).
ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_source(source: str | None, sheet_dir: str | Path) -> bool:
    """Whether a sheet's source is a LoRA adapter: ``peft:PATH``, or ``file:PATH`` of a folder
    holding an adapter_config.json (relative paths are relative to the sheet)."""
    kind, _, argument = str(source or "").partition(":")
    if kind == "peft":
        return True
    if kind != "file" or not argument:
        return False
    path = Path(argument).expanduser()
    return ((path if path.is_absolute() else Path(sheet_dir) / path) / ADAPTER_CONFIG).is_file()


def base_problems(numbered_rows: list[tuple[int, dict]], sheet_dir: str | Path = ".") -> list[str]:
    """The problems of the zoo column ``base`` (docs/finetunes.md), one line per row: a base that
    names no row of the sheet or the row itself, a cycle of bases, an adapter (``peft:`` source,
    or a ``file:`` adapter folder) without a base. Whether a base shares layers with its model is
    known once both are fetched (zooscope.spectra.delta_esd)."""
    bases = {row.get("model"): row.get("base") for _, row in numbered_rows}
    problems = []
    for number, row in numbered_rows:
        model, base = row.get("model"), row.get("base")
        label = f"row {number} (model '{model}')"
        if not base and is_adapter_source(row.get("source"), sheet_dir):
            problems.append(f"{label}: an adapter (peft: source or adapter folder) needs the model it adapts in "
                            "the column 'base'")
        if not base:
            continue
        if base == model:
            problems.append(f"{label}: column 'base' names the model itself; name the model it was fine-tuned from")
        elif base not in bases:
            problems.append(f"{label}: column 'base' names '{base}', which is no model of this sheet; add a row "
                            "for the base model or correct the name")
        else:
            chain, current = [model], base
            while current and current not in chain:
                chain.append(current)
                current = bases.get(current)
            if current == model:
                problems.append(f"{label}: its bases form a cycle ({' -> '.join([*chain, model])}); one of them "
                                "must have no base")
    return problems
