"""The ``delta_`` columns: metrics of each layer's update against the model's base (zooscope.spectra.delta).

They exist only for models with a base (an esd index with a ``delta`` section): a zoo without
bases keeps the tables it always had. Per matrix (layers.tsv row) the update's own spectrum gives
``delta_lambda_max``, ``delta_log_norm``, ``delta_stable_rank`` and, with at least ``min_evals``
eigenvalues, ``delta_alpha`` (the same definitions as the weights' columns, zooscope.analysis.metrics);
the esd stage gives ``delta_relative_norm`` (||dW||_F / ||W_base||_F) and the overlaps.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

# layers.tsv columns of the update, after the weights' own columns.
DELTA_COLUMNS = (
    "delta_status", "delta_reason", "delta_num_evals", "delta_lambda_max", "delta_alpha", "delta_log_norm",
    "delta_stable_rank", "delta_relative_norm", "delta_overlap", "delta_overlap_max",
)
# Averaged into the model summary (models.tsv), each over the rows that have it.
DELTA_METRICS = (
    "delta_alpha", "delta_lambda_max", "delta_log_norm", "delta_stable_rank", "delta_relative_norm",
    "delta_overlap", "delta_overlap_max",
)
DELTA_INTEGER_COLUMNS = ("delta_num_evals",)
DELTA_TEXT_COLUMNS = ("delta_status", "delta_reason")
# Statuses of a layer's update: its spectrum was fitted, it was too small to fit (its norms are
# there), it failed, the weights equal the base's, or the layer has no partner in the base.
DELTA_STATUSES = ("ok", "skipped", "failed", "unchanged", "unmatched")


def delta_cells(section: Mapping, load_eigenvalues: Callable, spectrum_metrics: Callable
                ) -> dict[tuple[str, str], dict]:
    """The delta columns of every (layer, slice) with an update, from an index's ``delta`` section.

    ``load_eigenvalues(record)``: a record's eigenvalue array (the esd folder's loader: a delta
    record's ``file`` is relative to it); ``spectrum_metrics(values)``: the weights' metrics of
    one spectrum (zooscope.analysis.metrics.spectrum_metrics with the fit settings bound).
    A layer without rows of its own (unchanged, unmatched, failed) is keyed by (layer, None): its
    cells apply to every row of the layer.
    """
    cells = {}
    for record in section["layers"]:
        if record["status"] != "ok":
            cells[(record["name"], None)] = {
                "delta_status": record["status"], "delta_reason": record["reason"],
                "delta_relative_norm": 0.0 if record["status"] == "unchanged" else None}
            continue
        values = load_eigenvalues(record)
        for i, label in enumerate(record["slices"]):
            metrics = spectrum_metrics(values[i])
            cells[(record["name"], label)] = {
                "delta_status": metrics["status"], "delta_reason": metrics["reason"],
                "delta_num_evals": metrics["num_evals"],
                **{f"delta_{name}": metrics.get(name) for name in ("lambda_max", "alpha", "log_norm", "stable_rank")},
                "delta_relative_norm": record["relative_norm"][i], "delta_overlap": _number(record["overlap"][i]),
                "delta_overlap_max": _number(record["overlap_max"][i]),
            }
    return cells


def delta_columns_of(cells: Mapping, layer: str, label: str) -> dict:
    """One layers.tsv row's delta columns (empty where the row has no update)."""
    found = cells.get((layer, label), cells.get((layer, None), {}))
    return {column: found.get(column, "" if column in DELTA_TEXT_COLUMNS else None) for column in DELTA_COLUMNS}


def delta_summary(rows: Iterable[Mapping]) -> dict:
    """The model summary's delta means: each DELTA_METRICS column over the rows that have it (an
    unchanged layer's relative norm, 0, included: it says how much of the model moved)."""
    rows = list(rows)
    means = {}
    for metric in DELTA_METRICS:
        present = [float(row[metric]) for row in rows if not _missing(row.get(metric))]
        means[metric] = math.fsum(present) / len(present) if present else math.nan
    return means


def delta_counts(rows: Iterable[Mapping]) -> dict:
    """How many layers (not rows) of each update status, for summary.json."""
    statuses = {}
    for row in rows:
        statuses.setdefault(row["layer"], row["delta_status"])
    return {f"num_delta_{status}": sum(s == status for s in statuses.values()) for status in DELTA_STATUSES}


def _number(value):
    return None if _missing(value) else float(value)


def _missing(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def noise_edge_ratio(lambda_max: float, log_norm: float, n: int, m: int) -> float:
    """How far an update's largest eigenvalue lies beyond a random matrix's: ``lambda_max`` of
    dW^T dW over the Marchenko-Pastur bulk edge sigma^2 (sqrt(N) + sqrt(M))^2 of an N x M matrix of
    i.i.d. entries with the update's own size, sigma^2 = ||dW||_F^2 / (N M) (``log_norm`` = log10
    ||dW||_F^2). About 1 for an update that is noise (its ESD is the random matrix's); well above 1
    when the update has directions of its own (spikes: learned, low-rank structure). NaN without a norm."""
    if not (math.isfinite(lambda_max) and math.isfinite(log_norm)) or n < 1 or m < 1:
        return math.nan
    edge = 10.0 ** log_norm / (n * m) * (math.sqrt(n) + math.sqrt(m)) ** 2
    return lambda_max / edge if edge > 0 else math.nan
