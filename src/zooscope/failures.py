"""Model-level failures as records: a model that cannot be fetched, analysed or fitted costs
only itself (docs/failures.md).

A per-model job (fetch, esd, esd_shard, fit, jacobian) that fails for its model does not fail in
Snakemake's eyes: it writes its outputs as a *failure record* (the JSON output carries a
``failed`` entry: stage, reason, attempt; the other outputs are empty of their kind), so every
later job of the zoo still runs, and the zoo tables list the model as failed. A job whose input
carries a failure record writes its own outputs as the same record, without computing.

The next run retries exactly those jobs through Snakemake's ``params`` rerun trigger: each such
rule has a parameter ``attempt`` (:func:`attempt`), the number of times its job failed, kept in a
small counter file beside its JSON output (:func:`counter_path`; not an output, so Snakemake
never removes it). A job that fails counts its failure there: on the next run the parameter
differs from the one Snakemake stored for the job, so the job reruns; a job that completes leaves
the count as it is, so it never reruns for this reason. (The count is read from a file that no
job touches until it ends, so Snakemake sees the same value whenever it evaluates the parameter.)
Kept free of heavy imports (the Snakefile imports it).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

#: The key of a failure record in a stage's JSON output.
FAILED = "failed"
#: The stages whose jobs turn a model's failure into a record, in workflow order.
STAGES = ("fetch", "esd", "fit", "jacobian")


@dataclass(frozen=True)
class Failure:
    """Why a model has no result: the ``stage`` that failed (fetch, esd, fit, jacobian), its
    one-line ``reason``, and the ``attempt`` (0 the first time, +1 per retry) that failed."""

    stage: str
    reason: str
    attempt: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, plain: dict) -> "Failure":
        return cls(stage=str(plain["stage"]), reason=str(plain["reason"]), attempt=int(plain.get("attempt", 0)))


def _read(path: str | os.PathLike) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def read_failure(path: str | os.PathLike) -> Failure | None:
    """The failure record a stage's JSON output carries; None for a completed (or missing) one."""
    doc = _read(path)
    return Failure.from_json(doc[FAILED]) if doc and doc.get(FAILED) else None


def first_failure(paths: Iterable[str | os.PathLike]) -> Failure | None:
    """The first failure record among a job's JSON inputs (None: they all completed)."""
    for path in paths:
        failure = read_failure(path)
        if failure is not None:
            return failure
    return None


def counter_path(output: str | os.PathLike) -> Path:
    """The file that counts the failures of the job whose JSON output is ``output``."""
    output = Path(output)
    return output.with_name(f".{output.name}.failures")


def attempt(output: str | os.PathLike) -> int:
    """The ``attempt`` parameter of the job whose JSON output is ``output``: how often it failed."""
    try:
        return int(counter_path(output).read_text(encoding="ascii").strip() or 0)
    except (OSError, ValueError):
        return 0


def count_failure(output: str | os.PathLike) -> None:
    """Count one more failure of the job whose JSON output is ``output`` (the next run retries it)."""
    from zooscope.io import write_text

    write_text(counter_path(output), f"{attempt(output) + 1}\n")


def model_status(summary: dict) -> tuple[str, str, str]:
    """(status, failed_stage, reason) of a model from its summary.json: ``failed`` with the
    record's stage and reason; ``unfitted`` (stage fit) when no layer could be fitted, a property
    of the model's weights, not a job's failure: not retried, not left out of the regressions on
    the Jacobian's metrics; else ``ok``."""
    if summary.get(FAILED):
        failure = Failure.from_json(summary[FAILED])
        return "failed", failure.stage, failure.reason
    if not summary.get("num_fitted"):
        return "unfitted", "fit", (f"no layer could be fitted ({summary.get('num_skipped', 0)} skipped, "
                                 f"{summary.get('num_failed', 0)} failed of {summary.get('num_rows', 0)} matrices)")
    return "ok", "", ""


def write_empty_safetensors(path: str | os.PathLike) -> None:
    """A valid safetensors file without tensors (a failed fetch's weights)."""
    from zooscope.io import atomic_path

    header = b"{}" + b" " * 6  # 8-byte aligned, as safetensors writes it
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(len(header).to_bytes(8, "little") + header)


# ------------------------------------------------------------- the outputs of a failed job


def _record(doc: dict, failure: Failure) -> dict:
    return {**doc, FAILED: failure.to_json()}


def write_failed_fetch(out_dir: str | os.PathLike, row: dict, failure: Failure) -> None:
    """A failed fetch's outputs: no weights, no layers, no tensors, the sheet's facts about the model
    (``row``: zooscope.zoo.ZooRow.as_dict) in meta.json, with the record."""
    from zooscope.io import write_json

    out_dir = Path(out_dir)
    write_empty_safetensors(out_dir / "model.safetensors")
    write_json(out_dir / "layers.json", _record({"model": row["model"], "layers": []}, failure))
    write_json(out_dir / "tensors.json", {"model": row["model"], "tensors": []})
    write_json(out_dir / "meta.json", _record({
        "model": row["model"], "series": row["series"], "source": row["source"]["text"],
        "accuracy": row["accuracy"], "accuracy_source": "zoo sheet" if row["accuracy"] is not None else "",
        "num_params": None, "options": row.get("options", {}),
    }, failure))


def write_failed_index(path: str | os.PathLike, model: str, settings: dict, failure: Failure,
                       shard: tuple[int, int] | None = None) -> None:
    """A failed esd (or esd shard) job's index: no layers, the record."""
    from zooscope.io import write_json

    doc = {"model": model, "settings": settings, "layers": []}
    write_json(path, _record(doc if shard is None else {**doc, "shard": list(shard)}, failure))


def write_failed_fit(layers_path: str | os.PathLike, summary_path: str | os.PathLike, model: str,
                     failure: Failure) -> None:
    """A failed fit job's outputs: a layers.tsv without rows, the summary of no rows (every key a
    summary has, zooscope.analysis.metrics.summarize) with the record."""
    from zooscope.analysis.metrics import LAYER_COLUMNS, summarize
    from zooscope.io import write_json, write_rows_tsv

    write_rows_tsv(layers_path, LAYER_COLUMNS, [])
    write_json(summary_path, _record(summarize(model, []), failure))


# ------------------------------------------------------------------ one results folder per zoo

#: Folders of results/ that hold per-model results, shared by every zoo: no zoo may be named so.
SHARED_RESULTS = ("esd", "metrics", "jacobian", "plots")


def results_folder(sheet: str | os.PathLike, results: str | None = None) -> tuple[str, str]:
    """(zoo name, results folder) of a zoo sheet: config ``results`` if set, else
    ``results/<the sheet's name without extension>``; the name is the folder's last part (the
    zoo's logs go under logs/<name>). A ConfigError for a name that is a shared folder."""
    from zooscope.config import ConfigError

    folder = Path(results) if results else Path("results") / Path(sheet).stem
    name = folder.name
    clash = folder.parent == Path("results") and name in SHARED_RESULTS
    if clash or name in ("fetch", "fit", *SHARED_RESULTS):
        raise ConfigError(
            f"the zoo sheet {sheet} would write its tables into {folder}/, a folder of the per-model results "
            f"({', '.join(f'results/{n}' for n in SHARED_RESULTS)}) or logs; rename the sheet or pass "
            "--config results=results/OTHER_NAME")
    return name, folder.as_posix()


def write_failed_jacobian(layers_path: str | os.PathLike, summary_path: str | os.PathLike,
                          spectra_path: str | os.PathLike, model: str, columns, failure: Failure) -> None:
    """A failed Jacobian job's outputs: a layers.tsv without rows (``columns``), no spectra, a
    summary without metrics."""
    from zooscope.io import write_json, write_rows_tsv

    write_rows_tsv(layers_path, columns, [])
    write_empty_safetensors(spectra_path)
    write_json(summary_path, _record({"model": model, "metrics": {}}, failure))
