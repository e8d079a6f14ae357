"""Per-layer metrics from eigenvalues, and the per-model summary (docs/method.md, "Per matrix").

Every reported log is base 10. A matrix that cannot be fitted still gets a row, with ``status``
("skipped": too few eigenvalues; "failed": bad weights or a degenerate spectrum) and ``reason``.
"""
from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from zooscope.analysis.delta import (
    DELTA_COLUMNS, DELTA_INTEGER_COLUMNS, DELTA_TEXT_COLUMNS, delta_cells, delta_columns_of, delta_counts,
    delta_summary,
)
from zooscope.config import FitSettings
from zooscope.fits.powerlaw import fit_power_law
from zooscope.spectra.random_matrix import esd_distance, fit_marchenko_pastur
from zooscope.fits.truncated import (
    FIT_KINDS, TailFit, fit_exp_truncated_power_law, fit_truncated_power_law, power_law_loglik,
)

if TYPE_CHECKING:
    import pandas as pd

# Columns of results/metrics/{model}/layers.tsv, in order.
LAYER_COLUMNS = (
    "layer", "slice", "type", "depth", "N", "M", "num_evals", "lambda_max", "alpha", "xmin",
    "xmax", "D", "sigma", "num_pl_spikes", "log_norm", "log_spectral_norm", "alpha_weighted",
    "log_alpha_norm", "stable_rank", "fit_kind", "truncation", "loglik", "mp_bulk_edge", "mp_softrank",
    "num_spikes", "rand_distance", "num_traps", "warning", "status", "reason",
)
# Per-layer quantities averaged into the model summary (over rows with status "ok").
SUMMARY_METRICS = (
    "alpha", "alpha_weighted", "log_alpha_norm", "log_norm", "log_spectral_norm", "stable_rank",
    "D", "sigma", "num_pl_spikes", "lambda_max", "mp_softrank", "num_spikes", "rand_distance", "num_traps",
)
# Integer columns (nullable: empty where a row has no fit) and text columns (empty, never missing).
INTEGER_COLUMNS = ("depth", "N", "M", "num_evals", "num_pl_spikes", "num_spikes", "num_traps")
TEXT_COLUMNS = ("slice", "fit_kind", "warning", "reason")
# The alpha band of a well-trained layer (docs/method.md, "Per matrix"): alpha below 2 is
# over-trained, above 6 under-trained. The one definition: the warning column, the audit's counts
# and words, and the lines of the correlation-flow figure all read these.
OVER_TRAINED_BELOW = 2.0
UNDER_TRAINED_ABOVE = 6.0


def norm_metrics(values: np.ndarray) -> dict:
    """Norm metrics of one spectrum (needs a positive lambda_max)."""
    lambda_max = float(values[-1])
    total = float(values.sum())
    return {
        "num_evals": int(values.size),
        "lambda_max": lambda_max,
        "log_norm": math.log10(total),
        "log_spectral_norm": math.log10(lambda_max),
        "stable_rank": total / lambda_max,
    }


def warning_for(alpha: float) -> str:
    if alpha < OVER_TRAINED_BELOW:
        return "over-trained"
    if alpha > UNDER_TRAINED_ABOVE:
        return "under-trained"
    return ""


def fit_tail(values: np.ndarray, *, kind: str = FitSettings.kind, floor: float = FitSettings.floor) -> TailFit:
    """The tail fit of config ``fit.kind``: ``pl`` (pure power law, Clauset et al.), ``tpl``
    (truncated at lambda_max, on the pure fit's tail) or ``etpl`` (exponentially truncated, from
    the ESD peak); see zooscope.fits.truncated."""
    _check_kind(kind)
    if kind == "etpl":
        return fit_exp_truncated_power_law(values, floor=floor)
    fit = fit_power_law(values, floor=floor)
    if kind == "tpl":
        return fit_truncated_power_law(values, xmin=fit.xmin)
    tail = values[values >= fit.xmin]
    return TailFit(kind="pl", alpha=fit.alpha, xmin=fit.xmin, xmax=fit.xmax, D=fit.D, sigma=fit.sigma,
                   num_pl_spikes=fit.num_pl_spikes, truncation=math.nan,
                   loglik=power_law_loglik(tail, fit.alpha, fit.xmin))


def _check_kind(kind: str) -> None:
    if kind not in FIT_KINDS:
        raise ValueError(f"unknown fit kind {kind!r}; valid: {', '.join(FIT_KINDS)} (config fit.kind)")


def random_matrix_metrics(values: np.ndarray, shape: tuple[int, int], randomized: np.ndarray | None = None) -> dict:
    """MP bulk columns of one ESD and, given the ESD of the shuffled matrix, the randomization
    check: ``rand_distance`` (KS distance of the two ESDs) and ``num_traps`` (eigenvalues of the
    shuffled matrix above its own MP bulk edge: correlation traps)."""
    mp = fit_marchenko_pastur(values, shape)
    row = {"mp_bulk_edge": mp.bulk_edge, "mp_softrank": mp.softrank, "num_spikes": mp.num_spikes}
    if randomized is not None:
        row.update(rand_distance=esd_distance(values, randomized),
                   num_traps=fit_marchenko_pastur(randomized, shape).num_spikes)
    return row


def spectrum_metrics(values: np.ndarray, *, min_evals: int = FitSettings.min_evals,
                     floor: float = FitSettings.floor, kind: str = FitSettings.kind,
                     shape: tuple[int, int] | None = None, randomized: np.ndarray | None = None) -> dict:
    """All metrics of one matrix's eigenvalues (ascending), with ``status`` and ``reason``.

    ``shape`` (N, M) of the matrix adds the MP columns, ``randomized`` (the ESD of the
    shuffled matrix) the randomization check; fitted rows only. An unknown ``kind`` is an
    error of the caller, not a failed row.
    """
    _check_kind(kind)
    values = np.asarray(values, dtype=np.float64)
    row: dict = {"num_evals": int(values.size), "status": "ok", "reason": "", "warning": ""}
    if values.size == 0 or not values[-1] > 0:
        row.update(status="failed", reason="degenerate spectrum: all eigenvalues are zero")
        return row
    row.update(norm_metrics(values))
    if values.size < min_evals:
        row.update(status="skipped", reason=f"{values.size} eigenvalues < min_evals={min_evals}")
        return row
    try:
        fit = fit_tail(values, kind=kind, floor=floor)
    except ValueError as error:
        row.update(status="failed", reason=str(error))
        return row
    positive = values[values > 0]
    row.update(
        alpha=fit.alpha,
        xmin=fit.xmin,
        xmax=fit.xmax,
        D=fit.D,
        sigma=fit.sigma,
        num_pl_spikes=fit.num_pl_spikes,
        fit_kind=fit.kind,
        truncation=fit.truncation,
        loglik=fit.loglik,
        alpha_weighted=fit.alpha * math.log10(fit.xmax),
        # log10 sum lambda^alpha, computed as log10(lambda_max^alpha * sum (lambda/lambda_max)^alpha)
        # so that large alphas cannot overflow.
        log_alpha_norm=fit.alpha * math.log10(row["lambda_max"])
        + math.log10(float(np.sum((positive / row["lambda_max"]) ** fit.alpha))),
        warning=warning_for(fit.alpha),
    )
    if shape is not None:
        row.update(random_matrix_metrics(values, shape, randomized))
    return row


def layer_columns(index: Mapping) -> tuple[str, ...]:
    """The layers.tsv columns of an esd index: LAYER_COLUMNS, then DELTA_COLUMNS for a model with a
    base (zooscope.analysis.delta)."""
    return (*LAYER_COLUMNS, *DELTA_COLUMNS) if "delta" in index else LAYER_COLUMNS


def layer_rows(index: dict, load_eigenvalues, fit: FitSettings = FitSettings()) -> list[dict]:
    """One row per matrix of every layer of an esd index (see zooscope.spectra.esd), as dicts with every
    key of :func:`layer_columns`: None where a metric does not apply, "" for an empty text column.

    ``load_eigenvalues(record)`` gives a record's eigenvalue array; for a record with a
    ``rand_file``, ``load_eigenvalues(record, randomized=True)`` the shuffled matrices' one.
    ``fit``: config ``fit:``. Plain dicts, not a DataFrame: the fit job then needs no pandas (a
    third of its start-up).
    """
    rows = []
    for record in index["layers"]:
        base = {"layer": record["name"], "type": record["type"], "depth": record["depth"],
                "N": record["N"], "M": record["M"]}
        if record["status"] != "ok":
            rows.append({**base, "slice": "", "status": record["status"], "reason": record["reason"]})
            continue
        values = load_eigenvalues(record)
        randomized = load_eigenvalues(record, randomized=True) if record.get("rand_file") else [None] * len(values)
        for label, row_values, row_rand in zip(record["slices"], values, randomized, strict=True):
            rows.append({**base, "slice": label,
                         **spectrum_metrics(row_values, min_evals=fit.min_evals, floor=fit.floor, kind=fit.kind,
                                            shape=(record["N"], record["M"]), randomized=row_rand)})
    rows = [{column: row.get(column, "" if column in TEXT_COLUMNS else None) for column in LAYER_COLUMNS}
            for row in rows]
    if "delta" in index:
        cells = delta_cells(index["delta"], load_eigenvalues,
                            partial(spectrum_metrics, min_evals=fit.min_evals, floor=fit.floor, kind=fit.kind))
        rows = [{**row, **delta_columns_of(cells, row["layer"], row["slice"])} for row in rows]
    return rows


def layers_frame(rows: list[dict]) -> "pd.DataFrame":
    """The rows of :func:`layer_rows` as a DataFrame, integer columns as nullable Int64."""
    import pandas as pd

    columns = list(LAYER_COLUMNS) + [column for column in DELTA_COLUMNS if rows and column in rows[0]]
    frame = pd.DataFrame(rows, columns=columns)
    for column in (*INTEGER_COLUMNS, *DELTA_INTEGER_COLUMNS):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    return frame


def fit_layers(index: dict, load_eigenvalues, fit: FitSettings = FitSettings()) -> "pd.DataFrame":
    """:func:`layer_rows` as a DataFrame (:func:`layers_frame`)."""
    return layers_frame(layer_rows(index, load_eigenvalues, fit))


def summarize(model: str, rows: Iterable[Mapping], delta: Mapping | None = None) -> dict:
    """The per-model summary: the plain mean of each metric over the rows that were fitted.

    ``rows``: the layer rows (:func:`layer_rows`). A metric missing (None or NaN) from some fitted
    rows is averaged over the others; NaN if it is missing from all. Sums are exact (math.fsum),
    so the mean does not depend on the order of the rows. ``delta``: the esd index's ``delta``
    section of a model with a base: the summary then has the delta means
    (zooscope.analysis.delta.delta_summary) and a ``delta`` entry (the base, layer counts by
    update status, the base's layers the model lacks).
    """
    rows = list(rows)
    fitted = [row for row in rows if row["status"] == "ok"]
    means = {}
    for metric in SUMMARY_METRICS:
        present = [float(row[metric]) for row in fitted if not _missing(row[metric])]
        means[metric] = (math.fsum(present) / len(present) if present else math.nan) if fitted else None
    extra = {}
    if delta is not None:
        means.update(delta_summary(rows))
        extra["delta"] = {"base": delta["base"], **delta_counts(rows), "base_only": delta["base_only"]}
    return {
        **extra,
        "model": model,
        "num_layers": len({row["layer"] for row in rows}),
        "num_rows": len(rows),
        "num_fitted": len(fitted),
        "num_skipped": sum(row["status"] == "skipped" for row in rows),
        "num_failed": sum(row["status"] == "failed" for row in rows),
        "metrics": means,
    }


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def read_layers_table(path) -> "pd.DataFrame":
    """Read a layers.tsv written by the fit stage, with text columns kept as text."""
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", dtype={"slice": str, "fit_kind": str, "warning": str, "reason": str,
                                               "layer": str, **dict.fromkeys(DELTA_TEXT_COLUMNS, str)})
    for column in (*TEXT_COLUMNS, *DELTA_TEXT_COLUMNS):
        if column in frame:
            frame[column] = frame[column].fillna("")
    return frame
