"""Validation of the workflow configuration against the JSON schema in schemas/ (zoo sheets: zooscope.zoo).

Kept free of heavy imports: the Snakefile calls it at parse time, which every cluster job repeats.
Errors name the file, the row and the field, so a user can fix a sheet without reading code.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml


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


def describe(error: jsonschema.ValidationError) -> str:
    """One line for a schema error: the field and what is wrong."""
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
        lines = "\n".join(f"  - {describe(error)}" for error in errors)
        raise ConfigError(f"{source}: invalid configuration:\n{lines}")
    _fill_defaults(config, schema)
    return config
