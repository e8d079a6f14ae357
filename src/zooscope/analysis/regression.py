"""Per-series regressions of reported accuracy on each model-level metric.

For every architecture series and every metric: ordinary least squares of accuracy on the
metric (statsmodels), with n, slope, intercept, R^2, RMSE, Pearson r, Spearman rho and Kendall
tau (see docs/method.md, "Per series: regressions against accuracy"). The same function runs on tables this workflow
made (``results/zoo/models.tsv``) and on any per-model table a user supplies, for example metrics
published by others; :func:`read_models_table` reads such a table.

Conventions:

- RMSE is sqrt(mean of the squared residuals) over n, with no degrees-of-freedom correction, as
  in the published tables.
- Kendall tau is the tau-b of :func:`scipy.stats.kendalltau`, signed.
- Rows where the accuracy or the metric is missing (NaN) or not finite (+-inf, e.g. the log of a
  zero norm) are left out of that (series, metric) regression; ``n`` counts the rows used.
- With fewer than 3 rows, or a metric that is constant within the series, every statistic is
  NaN (``n`` is still reported). With a constant accuracy the fit is the flat line (slope 0,
  RMSE 0) and R^2 and the correlations are NaN.
- Rows without a series are not part of any series and are left out.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from zooscope.analysis.aggregate import metric_columns
from zooscope.analysis.metrics import SUMMARY_METRICS

__all__ = [
    "METRIC_COLUMNS",
    "REQUIRED_COLUMNS",
    "REGRESSION_COLUMNS",
    "MIN_N",
    "ModelsTableError",
    "validate_models_table",
    "regress",
    "regress_one",
    "read_models_table",
]

#: The per-model metric columns the workflow produces (``results/zoo/models.tsv``), in order.
METRIC_COLUMNS: tuple[str, ...] = SUMMARY_METRICS

#: Columns every models table must have.
REQUIRED_COLUMNS: tuple[str, ...] = ("model", "series", "accuracy")

#: Columns of the regression table, in order.
REGRESSION_COLUMNS: tuple[str, ...] = (
    "series",
    "metric",
    "n",
    "slope",
    "intercept",
    "r2",
    "rmse",
    "pearson_r",
    "spearman_rho",
    "kendall_tau",
)

#: Fewest rows for which the statistics are reported (below: NaN).
MIN_N = 3

_STAT_COLUMNS = REGRESSION_COLUMNS[3:]


class ModelsTableError(ValueError):
    """A models table that cannot be used; the message names the file and the problem."""


def _present(frame: pd.DataFrame) -> str:
    return ", ".join(repr(str(c)) for c in frame.columns) or "(none)"


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series.dtype)


def _as_float(series: pd.Series) -> np.ndarray:
    """Numeric (also nullable or boolean) column -> float64 array with NaN for missing values."""
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


def validate_models_table(models: pd.DataFrame) -> None:
    """Check that ``models`` has the required columns and a numeric ``accuracy``.

    Raises ValueError naming the missing column and listing the columns present.
    """
    if not isinstance(models, pd.DataFrame):
        raise TypeError(f"models must be a pandas DataFrame, not {type(models).__name__}")
    for column in REQUIRED_COLUMNS:
        if column not in models.columns:
            raise ValueError(
                f"missing required column {column!r} (columns present: {_present(models)})"
            )
    if not _is_numeric(models["accuracy"]):
        raise ValueError(
            f"column 'accuracy' is not numeric (dtype {models['accuracy'].dtype}); "
            "expected numbers such as 71.59 or 0.7159"
        )


def _resolve_metrics(models: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    if metrics is None:
        return metric_columns(models)
    if isinstance(metrics, str):
        metrics = [metrics]
    resolved: list[str] = []
    for metric in metrics:
        if metric in REQUIRED_COLUMNS:
            raise ValueError(f"{metric!r} is not a metric column and cannot be regressed on")
        if metric not in models.columns:
            raise ValueError(
                f"metric column {metric!r} not found (columns present: {_present(models)})"
            )
        if not _is_numeric(models[metric]):
            raise ValueError(
                f"metric column {metric!r} is not numeric (dtype {models[metric].dtype}); "
                "every metric must be a number per model (missing values may be empty or NaN)"
            )
        if metric not in resolved:  # asking twice gives one row
            resolved.append(metric)
    return resolved


def regress_one(x, y) -> dict[str, float | int]:
    """OLS of ``y`` (accuracy) on ``x`` (one metric) with the correlation statistics.

    Pairs where either value is not finite are dropped. Returns a dict with the keys
    ``n, slope, intercept, r2, rmse, pearson_r, spearman_rho, kendall_tau``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    out: dict[str, float | int] = {"n": n, **{k: math.nan for k in _STAT_COLUMNS}}
    if n < MIN_N or np.ptp(x) == 0.0:
        return out
    import statsmodels.api as sm  # here: about 2 s to import, for a zoo with accuracies to regress
    from scipy import stats

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # A constant accuracy makes R^2 and the correlations 0/0; they come out NaN, quietly.
        warnings.simplefilter("ignore")
        result = sm.OLS(y, sm.add_constant(x, has_constant="add")).fit()
        intercept, slope = (float(v) for v in result.params)
        residuals = np.asarray(result.resid, dtype=np.float64)
        y_constant = np.ptp(y) == 0.0
        out.update(
            slope=slope,
            intercept=intercept,
            r2=math.nan if y_constant else float(result.rsquared),
            rmse=float(np.sqrt(np.mean(residuals**2))),
        )
        if not y_constant:
            out.update(
                pearson_r=float(stats.pearsonr(x, y).statistic),
                spearman_rho=float(stats.spearmanr(x, y).statistic),
                kendall_tau=float(stats.kendalltau(x, y).statistic),
            )
    return out


def regress(models: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Regress accuracy on each metric, per series.

    Parameters
    ----------
    models
        One row per model with the columns ``model``, ``series``, ``accuracy`` and one numeric
        column per metric (other columns are allowed).
    metrics
        The metric columns to regress on, in output order. ``None``: every numeric column other
        than the descriptive ones, in table order (zooscope.analysis.aggregate.metric_columns).

    Returns
    -------
    DataFrame with the columns :data:`REGRESSION_COLUMNS`, one row per (series, metric):
    series sorted (as text), metrics in the given order.

    Raises
    ------
    ValueError
        A required column or a requested metric is missing (the message names it and lists the
        columns present), or a metric or the accuracy is not numeric.
    """
    validate_models_table(models)
    chosen = _resolve_metrics(models, metrics)

    series_col = models["series"]
    has_series = series_col.notna().to_numpy()
    series_text = np.array([str(s) for s in series_col], dtype=object)
    accuracy = _as_float(models["accuracy"])

    rows = []
    for series in sorted(set(series_text[has_series])):
        in_series = has_series & (series_text == series)
        y = accuracy[in_series]
        for metric in chosen:
            x = _as_float(models[metric])[in_series]
            rows.append({"series": series, "metric": metric, **regress_one(x, y)})

    table = pd.DataFrame(rows, columns=list(REGRESSION_COLUMNS))
    table = table.astype({"series": object, "metric": object, "n": np.int64})
    table = table.astype({c: np.float64 for c in _STAT_COLUMNS})
    return table.reset_index(drop=True)


def _separator(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in {".gz", ".bz2", ".xz", ".zst", ".zip"}:
        suffixes = suffixes[:-1]
    return "," if suffixes and suffixes[-1] == ".csv" else "\t"


def read_models_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a per-model table: tab-separated, or comma-separated when the name ends in ``.csv``
    (also compressed: ``.tsv.gz``, ``.csv.gz``, ...).

    ``model`` and ``series`` are read as text (so a series called ``1`` or ``NA`` stays text);
    every other column is parsed by pandas (numbers become numeric columns, empty cells NaN).

    Raises
    ------
    FileNotFoundError
        The file does not exist (the message names it).
    ModelsTableError (a ValueError)
        The file cannot be parsed, is empty, or lacks a required column / has a non-numeric
        accuracy; the message starts with the file name.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ModelsTableError(f"{path}: is a directory, expected a TSV/CSV table")
    sep = _separator(path)
    kind = "CSV" if sep == "," else "TSV"
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            dtype={"model": str, "series": str},
            keep_default_na=True,
            comment=None,
        )
    except pd.errors.EmptyDataError:
        raise ModelsTableError(f"{path}: empty file, expected a {kind} table with a header") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelsTableError(f"{path}: cannot read as a {kind} table: {message}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    try:
        validate_models_table(frame)
    except ValueError as exc:
        hint = ""
        if len(frame.columns) == 1 and ("," in frame.columns[0] or "\t" in frame.columns[0]):
            hint = f" (read as {kind}: is the separator right for this file name?)"
        raise ModelsTableError(f"{path}: {exc}{hint}") from None
    if frame.empty:
        raise ModelsTableError(f"{path}: the table has a header but no rows")
    return frame
