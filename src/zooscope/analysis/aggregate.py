"""The aggregate stage: one row per model (models.tsv) from each model's meta.json and summary.json.

A failed model (zooscope.failures) keeps its row: ``status`` failed, the ``failed_stage`` and the
``reason``, the sheet's facts (series, source, accuracy) and empty metrics."""
from __future__ import annotations

import pandas as pd

from zooscope.analysis.delta import DELTA_METRICS
from zooscope.analysis.metrics import INTERVAL_COLUMNS, RELIABLE_METRICS, SUMMARY_METRICS
from zooscope.sources.coverage import COVERAGE_COUNTS
from zooscope.failures import model_status

# Columns of models.tsv that describe a model rather than measure it.
MODEL_INFO_COLUMNS = (
    "model", "series", "source", "accuracy", "accuracy_source", "num_params", "num_layers",
    "num_fitted", "num_skipped", "num_failed", "num_reliable", *COVERAGE_COUNTS, "status", "failed_stage", "reason",
)
# The per-model metric columns: the means over fitted rows, over reliable rows, and the intervals.
MODEL_METRICS = (*SUMMARY_METRICS, *RELIABLE_METRICS, *INTERVAL_COLUMNS)
MODEL_COLUMNS = (*MODEL_INFO_COLUMNS, *MODEL_METRICS)
# The one list of columns that are not metrics, in models.tsv or in a table a user supplies (which
# may say num_parameters): never taken as metrics when none are named (regressions, discrimination),
# though a bookkeeping count can still be regressed on by name. The intervals of the model means
# (docs/statistics.md) describe a metric's uncertainty; they are no metric of their own; base: a
# fine-tune's base model.
NOT_METRICS = (*MODEL_INFO_COLUMNS, "base", "num_parameters", *INTERVAL_COLUMNS)


def metric_columns(models: pd.DataFrame) -> list[str]:
    """The metric columns of a models table, in table order: every numeric column (whatever stage
    wrote it: the summary's, the Jacobian stage's jac_ ones, a user's) except :data:`NOT_METRICS`
    and booleans (flags, not measurements)."""
    return [str(column) for column in models.columns
            if column not in NOT_METRICS and pd.api.types.is_numeric_dtype(models[column].dtype)
            and not pd.api.types.is_bool_dtype(models[column].dtype)]


def models_table(metas: list[dict], summaries: list[dict]) -> pd.DataFrame:
    """Join model metadata and summaries, in the given (zoo sheet) order.

    When some model has a base (its summary has a ``delta`` entry), the table also has the column
    ``base`` and the means of the delta metrics (empty for the models without a base).
    """
    with_base = any("delta" in summary for summary in summaries)
    delta = ["base", *DELTA_METRICS] if with_base else []
    rows = []
    for meta, summary in zip(metas, summaries, strict=True):
        if meta["model"] != summary["model"]:
            raise ValueError(f"meta.json of {meta['model']!r} paired with summary of {summary['model']!r}")
        rows.append({
            "model": meta["model"],
            "series": meta["series"],
            "source": meta["source"],
            "accuracy": meta.get("accuracy"),
            "accuracy_source": meta.get("accuracy_source") or "",
            "num_params": meta.get("num_params"),
            **{key: summary[key] for key in ("num_layers", "num_fitted", "num_skipped", "num_failed", "num_reliable")},
            **(summary.get("coverage") or {}),
            **dict(zip(("status", "failed_stage", "reason"), model_status(summary))),
            **summary["metrics"],
            **({"base": summary.get("delta", {}).get("base") or ""} if with_base else {}),
        })
    frame = pd.DataFrame(rows, columns=[*MODEL_COLUMNS, *delta])
    frame["accuracy"] = frame["accuracy"].astype(float)
    for column in (*MODEL_METRICS, *delta[1:]):
        frame[column] = frame[column].astype(float)
    return frame


def delta_metric_columns(models: pd.DataFrame) -> list[str]:
    """The delta metrics that models.tsv has (those of zooscope.analysis.delta; none without bases)."""
    return [column for column in DELTA_METRICS if column in models.columns]


def join_jacobian(models: pd.DataFrame, jacobian_summaries: list[dict]) -> tuple[pd.DataFrame, list[str]]:
    """models.tsv with the Jacobian stage's per-model ``jac_`` metrics joined on ``model``
    (empty for models without a data set), and the names of those columns.

    Without any Jacobian summary the table is returned unchanged: a zoo without data sets keeps
    the columns it always had. The columns are those the summaries carry (the stage defines them,
    zooscope.jacobian.compute.JACOBIAN_METRICS), so this module stays free of torch.
    """
    if not jacobian_summaries:
        return models, []
    columns = list(dict.fromkeys(key for summary in jacobian_summaries for key in summary["metrics"]))
    found = {summary["model"]: summary["metrics"] for summary in jacobian_summaries}
    unknown = sorted(set(found) - set(models["model"]))
    if unknown:
        raise ValueError(f"Jacobian summaries of models not in the table: {', '.join(unknown)}")
    extra = pd.DataFrame(
        [{column: found.get(model, {}).get(column) for column in columns} for model in models["model"]],
        columns=columns, index=models.index, dtype=float,
    )
    return pd.concat([models, extra], axis=1), columns
