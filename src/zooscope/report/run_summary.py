"""The run summary: at the end of every run (Snakefile ``onsuccess`` / ``onerror``), on the
console and in ``logs/{zoo}/run-summary.txt``, every model that failed or has failed or skipped
layers, with the reasons counted, and the run's exit status (docs/failures.md):

- a failed model (zooscope.failures: a failure record) makes the run exit with status 1, after
  every table was written over the models that completed;
- a failed layer does so only with config ``on_layer_failure: fail`` (default ``warn``);
- skipped layers (fewer than ``min_evals`` eigenvalues) and models without a layer that could be
  fitted (status ``unfitted``) never do.

Reads only the models' summary.json files (no pandas: the Snakefile imports this module).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from zooscope.failures import model_status, read_failure

ON_LAYER_FAILURE = ("warn", "fail")


@dataclass(frozen=True)
class ModelOutcome:
    """One model's line of the summary: its status, and its layers' problems counted
    ({"failed"|"skipped": {reason: count}}); ``status`` "missing" when it has no summary yet."""

    model: str
    status: str
    stage: str = ""
    reason: str = ""
    problems: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunSummary:
    zoo: str
    outcomes: tuple[ModelOutcome, ...]
    on_layer_failure: str = "warn"
    errored: bool = False

    @property
    def failed_models(self) -> list[ModelOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def failed_layers(self) -> int:
        return sum(sum(o.problems.get("failed", {}).values()) for o in self.outcomes)

    @property
    def exit_status(self) -> int:
        """1 if the run must fail (module docstring), else 0 (an errored run fails anyway)."""
        if self.errored or self.failed_models:
            return 1
        return int(self.on_layer_failure == "fail" and self.failed_layers > 0)

    def text(self) -> str:
        counts = {status: sum(o.status == status for o in self.outcomes)
                  for status in ("ok", "unfitted", "failed", "missing")}
        skipped = sum(sum(o.problems.get("skipped", {}).values()) for o in self.outcomes)
        lines = [f"zooscope run summary of zoo {self.zoo}: {len(self.outcomes)} models, "
                 f"{counts['ok'] + counts['unfitted']} completed"
                 + (f" ({counts['unfitted']} without a fitted layer)" if counts["unfitted"] else "")
                 + f", {counts['failed']} failed" + (f", {counts['missing']} not run" if counts["missing"] else "")
                 + f"; {self.failed_layers} layer matrices failed, {skipped} skipped"]
        if self.failed_models:
            lines.append("Failed models (the zoo tables list them with status failed; the next run retries them):")
            lines += [f"  {o.model}: {o.stage} failed: {o.reason}" for o in self.failed_models]
        unfitted = [o for o in self.outcomes if o.status == "unfitted"]
        if unfitted:
            lines.append("Models without a fitted layer (status unfitted; their weight metrics are empty):")
            lines += [f"  {o.model}: {o.reason}" for o in unfitted]
        with_problems = [o for o in self.outcomes if o.problems]
        if with_problems:
            lines.append("Models with failed or skipped layers (results/metrics/MODEL/layers.tsv, column reason):")
            for o in with_problems:
                parts = [f"{sum(reasons.values())} {status}: "
                         + "; ".join(f"{reason} (x{n})" for reason, n in reasons.items())
                         for status, reasons in o.problems.items()]
                lines.append(f"  {o.model}: " + " | ".join(parts))
        missing = [o.model for o in self.outcomes if o.status == "missing"]
        if missing:
            lines.append("Not run (the run stopped before them): " + ", ".join(missing))
        if self.errored:
            lines.append("Exit status 1: a job failed (see its message above and its log under logs/).")
        elif self.exit_status:
            why = "a model failed" if self.failed_models else "a layer failed and on_layer_failure is fail"
            lines.append(f"Exit status 1: {why}.")
        elif self.failed_layers:
            lines.append("Exit status 0: failed layers are warnings (on_layer_failure: warn).")
        return "\n".join(lines) + "\n"


def _read(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def run_summary(zoo: str, models: Iterable[str], summary_path: Callable[[str], str], *,
                on_layer_failure: str = "warn", errored: bool = False,
                jacobian_path: Callable[[str], str | None] = lambda model: None) -> RunSummary:
    """The summary of a zoo's models from their summary.json (``summary_path(model)``). A model
    whose weights completed but whose Jacobian summary (``jacobian_path(model)``, None: no data
    set) is a failure record counts as failed at stage jacobian here; in models.tsv it stays ok
    with empty ``jac_`` columns (its weight metrics are valid)."""
    if on_layer_failure not in ON_LAYER_FAILURE:
        raise ValueError(f"on_layer_failure must be one of {', '.join(ON_LAYER_FAILURE)}, not {on_layer_failure!r}")
    outcomes = []
    for model in models:
        summary = _read(summary_path(model))
        if summary is None:
            outcomes.append(ModelOutcome(model, "missing"))
            continue
        status, stage, reason = model_status(summary)
        jacobian = jacobian_path(model)
        failure = read_failure(jacobian) if jacobian and status != "failed" else None
        if failure is not None:
            status, stage, reason = "failed", failure.stage, failure.reason
        outcomes.append(ModelOutcome(model, status, stage, reason, summary.get("problems") or {}))
    return RunSummary(zoo, tuple(outcomes), on_layer_failure, errored)


def write_summary(summary: RunSummary, path: str | os.PathLike, echo: Callable[[str], None] = print) -> int:
    """Write the summary to ``path``, show it, and return the run's exit status."""
    from zooscope.io import write_text

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text(path, summary.text())
    echo(summary.text().rstrip("\n") + f"\n(also in {path})")
    return summary.exit_status
