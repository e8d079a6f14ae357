"""The workflow configuration (config.yaml and --config) as one frozen, typed RunConfig.

config.yaml groups its keys by stage: ``esd:`` (EsdConfig: the EsdSettings that change eigenvalues,
the device, shard_mb), ``fit:`` (FitSettings), ``jacobian:`` (JacobianSettings), ``threads:``
(Threads), ``select:`` (the layer selection, zooscope.sources.selection.Selection), and ``zoo``
(the sheet, zooscope.zoo). It is validated against
schemas/config.schema.yaml, whose defaults are the dataclasses' defaults here
(tests/test_config.py checks they agree) and whose descriptions are README's config table
(``python -m zooscope.config --table`` prints it). A key of the old flat layout gives an error
naming its new place. Rules pass a settings object's plain form (``as_dict()``) as params and
scripts rebuild it (``EsdSettings(**params.esd)``).

Kept free of heavy imports: the Snakefile calls it at parse time, which every cluster job repeats;
the settings classes are imported by the stages' jobs, so even yaml and jsonschema wait until used.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from zooscope.sources.selection import Selection, parse_selection

if TYPE_CHECKING:
    import jsonschema

# Where the schema is in a checkout (the package is src/zooscope).
CONFIG_SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"
# The keys of the flat layout before config.yaml was grouped by stage, and where each is now.
MOVED_KEYS = {
    "min_evals": "fit", "normalize": "esd", "conv2d": "esd", "conv2d_fft_size": "esd",
    "randomize": "esd", "device": "esd", "shard_mb": "esd", "shared_cache": "esd", "delta_top_k": "esd",
}


class ConfigError(ValueError):
    """A configuration file or zoo sheet that does not follow its schema."""


@dataclass(frozen=True)
class EsdSettings:
    """What changes a layer's eigenvalues: the esd cache key (with the layer's weights hash,
    zooscope.spectra.esd.cache_key) and the esd rules' params, so nothing else reruns the stage."""

    conv2d: str = "slices"
    normalize: str = "none"
    conv2d_fft_size: int | None = None
    randomize: bool = False
    gram: str = "float32"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def matrices(self) -> dict[str, Any]:
        """The settings of a layer's matrices and their eigenvalues (the keywords of
        zooscope.spectra.esd.layer_eigenvalues): all but ``randomize``. An update's spectrum
        (zooscope.spectra.delta_esd) depends on these alone."""
        return {"conv2d": self.conv2d, "normalize": self.normalize, "conv2d_fft_size": self.conv2d_fft_size,
                "gram": self.gram}


@dataclass(frozen=True)
class EsdConfig:
    """Config group ``esd:``: the EsdSettings, where eigenvalues are computed (``device``: it changes
    them by rounding only, so it is no cache key), the size rule of sharding (``shard_mb``), the
    zoo's shared store (``shared_cache``: where spectra are kept, not what they are, so no cache key
    either) and ``delta_top_k``, the top singular directions a model with a base compares
    (zooscope.spectra.delta_esd): it changes only the updates' overlap, never a layer's eigenvalues,
    so it is a param of the esd jobs of models with a base and of their updates' cache key alone."""

    settings: EsdSettings = EsdSettings()
    device: str = "cpu"
    shard_mb: float | None = None
    shared_cache: str | None = "results/esd/_shared"
    delta_top_k: int = 10


@dataclass(frozen=True)
class FitSettings:
    """Config group ``fit:``: the power-law fit of the fit stage and its uncertainty. ``min_evals``
    is a fit's too: a matrix (or, in the Jacobian stage, a spectrum) with fewer eigenvalues is not
    fitted.

    The uncertainty (docs/statistics.md): ``bootstrap`` resamples of the interval of alpha and xmin
    (0: none), ``level`` of every interval (the bootstrap's, the model means', the regressions'
    and the figures' bands), ``gof`` synthetic samples of the power law's goodness-of-fit p-value
    (0: none), ``alternatives``: the likelihood-ratio tests against the exponential, log-normal and
    etpl; ``fingers``: WeightWatcher's fix_fingers remedy (None, ``xmin_peak`` or ``clip_xmax``).
    """

    floor: float = 1.0e-5
    kind: str = "pl"
    min_evals: int = 50
    bootstrap: int = 100
    level: float = 0.95
    gof: int = 100
    alternatives: bool = True
    fingers: str | None = None

    @property
    def point_estimates(self) -> bool:
        """No bootstrap, goodness of fit or likelihood ratios: a fit of milliseconds per matrix."""
        return self.bootstrap == 0 and self.gof == 0 and not self.alternatives

    def without_uncertainty(self) -> FitSettings:
        """The same fit, point estimates only: no bootstrap, goodness of fit or likelihood ratios
        (the Jacobian stage's spectra, whose columns have none)."""
        return dataclasses.replace(self, bootstrap=0, gof=0, alternatives=False)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class JacobianSettings:
    """Config group ``jacobian:``: how the Jacobian stage runs (zooscope.jacobian.compute)."""

    batch_size: int = 64
    memory_mb: int = 1024
    input_output: bool = True
    hessian_probes: int = 2
    hessian_steps: int = 20

    @property
    def memory_budget(self) -> int:
        """Bytes of float32 J kept whole before the Grams are filled block by block."""
        return self.memory_mb * 2**20

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Threads:
    """Config group ``threads:``: threads per job of each stage."""

    fetch: int = 1
    esd: int = 2
    fit: int = 2
    jacobian: int = 1


@dataclass(frozen=True)
class RunConfig:
    """The whole configuration, checked (module docstring)."""

    zoo: Path
    esd: EsdConfig = EsdConfig()
    fit: FitSettings = FitSettings()
    jacobian: JacobianSettings = JacobianSettings()
    threads: Threads = Threads()
    # Config group select: the layer selection of every model (zooscope.sources.selection)
    select: Selection = Selection()
    # the zoo's results folder (None: results/ and the sheet's stem; zooscope.failures.results_folder)
    results: str | None = None
    # warn | fail: whether a failed layer fails the run (zooscope.report.run_summary)
    on_layer_failure: str = "warn"

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> RunConfig:
        """From a validated configuration with its defaults filled in (:func:`validate_config`)."""
        esd = dict(config["esd"])
        return cls(
            zoo=Path(config["zoo"]),
            esd=EsdConfig(device=esd.pop("device"), shard_mb=esd.pop("shard_mb"), shared_cache=esd.pop("shared_cache"),
                          delta_top_k=esd.pop("delta_top_k"), settings=EsdSettings(**esd)),
            fit=FitSettings(**config["fit"]),
            jacobian=JacobianSettings(**config["jacobian"]),
            threads=Threads(**config["threads"]),
            select=parse_selection(config["select"]),
            results=config["results"],
            on_layer_failure=config["on_layer_failure"],
        )


def load_schema(path: str | Path) -> dict:
    """A schema file (schemas/), parsed by libyaml where PyYAML has it: the pure-Python parser took
    45 ms of every run's start-up for the two schemas (2026-12-01)."""
    import yaml

    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def run_config(config: Mapping[str, Any], schema: Mapping[str, Any], *,
               source: str = "config.yaml") -> RunConfig:
    """The RunConfig of a configuration (config.yaml with --config applied); ConfigError if invalid."""
    return RunConfig.from_dict(validate_config(config, schema, source=source))


def validate_config(config: Mapping[str, Any], schema: Mapping[str, Any], *,
                    source: str = "config.yaml") -> dict:
    """Return a copy of ``config`` with schema defaults filled in; raise ConfigError otherwise.

    Values given on the command line as text (``--config 'esd={shard_mb: 2}'`` reaches Snakemake's
    config as the string "2") are read as YAML where the schema wants no string.
    """
    import jsonschema

    config = copy.deepcopy(dict(config))
    moved = [
        f"key '{key}' has moved into the '{group}:' group: write it as {group}: {{{key}: ...}} in "
        f"config.yaml (on the command line: --config '{group}={{{key}: VALUE}}')"
        for key, group in MOVED_KEYS.items() if key in config
    ]
    if moved:
        raise ConfigError(f"{source}: outdated configuration:\n" + "\n".join(f"  - {line}" for line in moved))
    _read_text_values(config, schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=str)
    if errors:
        lines = "\n".join(f"  - {describe(error)}" for error in errors)
        raise ConfigError(f"{source}: invalid configuration:\n{lines}")
    _fill_defaults(config, schema)
    return config


def _read_text_values(instance: dict, schema: Mapping[str, Any]) -> None:
    import yaml

    for key, sub in schema.get("properties", {}).items():
        value = instance.get(key)
        types = sub.get("type", [])
        types = [types] if isinstance(types, str) else types
        if isinstance(value, dict) and "object" in types:
            _read_text_values(value, sub)
        elif isinstance(value, str) and "string" not in types:
            try:
                instance[key] = yaml.safe_load(value)
            except yaml.YAMLError:
                pass  # left as text: the schema reports it


def _fill_defaults(instance: dict, schema: Mapping[str, Any]) -> None:
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
        return _unknown_keys(error, field)
    return f"field '{field}': {error.message}"


def _unknown_keys(error: jsonschema.ValidationError, field: str) -> str:
    """'unknown key min_eval, did you mean min_evals?': each unexpected key with the closest
    valid key of its level (difflib), else the valid keys."""
    import difflib

    valid = sorted(error.schema.get("properties", {}))
    where = f" in '{field}'" if field else ""
    parts = []
    for key in sorted(set(error.instance) - set(valid), key=str):
        close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
        parts.append(f"unknown key '{key}'{where}; did you mean '{close[0]}'?" if close
                     else f"unknown key '{key}'{where}; valid keys: {', '.join(valid)}")
    return "; ".join(parts) or f"unknown key: {error.message}"



# ----------------------------------------------------------------------------- README's table


def schema_keys(schema: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every leaf key of the schema as (dotted name, its schema), in the schema's order."""
    for key, sub in schema.get("properties", {}).items():
        name = f"{prefix}{key}"
        if sub.get("type") == "object":
            yield from schema_keys(sub, f"{name}.")
        else:
            yield name, sub


def config_table(schema: Mapping[str, Any]) -> str:
    """README's configuration table, generated from the schema: key, default, description."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name, sub in schema_keys(schema):
        value = sub.get("default")
        default = "required" if "default" not in sub else f"`{value if isinstance(value, str) else json.dumps(value)}`"
        description = " ".join(str(sub.get("description", "")).split()).replace("|", "\\|")
        lines.append(f"| `{name}` | {default} | {description} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zooscope.config", description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print README's configuration table")
    parser.add_argument("--schema", type=Path, default=CONFIG_SCHEMA, help="the config schema (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.table:
        parser.print_help()
        return 2
    sys.stdout.write(config_table(load_schema(args.schema)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
