"""Per-series regressions of reported accuracy on each model-level metric.

For every architecture series and every metric: ordinary least squares of accuracy on the
metric (statsmodels), with n, slope, intercept, R^2, RMSE, Pearson r, Spearman rho and Kendall
tau (see docs/method.md, "Per series: regressions against accuracy"). The same function runs on tables this workflow
made (``results/{zoo}/models.tsv``) and on any per-model table a user supplies, for example metrics
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

Uncertainty (docs/statistics.md, "Regressions"): ``slope_lo``/``slope_hi`` are statsmodels' OLS
t-interval of the slope at ``level``; ``r2_lo``/``r2_hi`` and ``kendall_tau_lo``/``_hi`` the
percentile interval of a pairs bootstrap over the series' models (RESAMPLES resamples, seeded,
the pairs put in a canonical order first so that the table does not depend on the row order;
resamples with a constant metric or accuracy are left out); ``loo_*_min``/``_max`` the range of
the slope and of tau over the fits that leave one model out, and ``most_influential`` the model
of the largest Cook's distance (``max_cooks_d``).
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
from zooscope.config import FitSettings
from zooscope.fits.bootstrap import percentile_interval

__all__ = [
    "METRIC_COLUMNS",
    "REQUIRED_COLUMNS",
    "REGRESSION_COLUMNS",
    "MIN_N",
    "ModelsTableError",
    "validate_models_table",
    "regress",
    "regress_one",
    "kendall_tau_b",
    "ols_band",
    "read_models_table",
]

#: The per-model metric columns the workflow produces (``results/{zoo}/models.tsv``), in order.
METRIC_COLUMNS: tuple[str, ...] = SUMMARY_METRICS

#: Columns every models table must have.
REQUIRED_COLUMNS: tuple[str, ...] = ("model", "series", "accuracy")

#: Columns of the regression table, in order.
REGRESSION_COLUMNS: tuple[str, ...] = (
    "series",
    "metric",
    "n",
    "num_left_out",
    "slope",
    "intercept",
    "r2",
    "rmse",
    "pearson_r",
    "spearman_rho",
    "kendall_tau",
    "slope_lo",
    "slope_hi",
    "r2_lo",
    "r2_hi",
    "kendall_tau_lo",
    "kendall_tau_hi",
    "loo_slope_min",
    "loo_slope_max",
    "loo_kendall_tau_min",
    "loo_kendall_tau_max",
    "max_cooks_d",
    "most_influential",
)

#: Fewest rows for which the statistics are reported (below: NaN).
MIN_N = 3
#: Pairs-bootstrap resamples of each regression's R^2 and Kendall tau.
RESAMPLES = 1000

_STAT_COLUMNS = REGRESSION_COLUMNS[4:-1]  # the float columns (after num_left_out); most_influential is text
_PAIRS_PER_BLOCK = 1 << 22  # elements of a block of pairwise sign matrices


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


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair of ``x`` and ``y`` (arrays of shape (..., n)), vectorised:
    (concordant - discordant) / sqrt((n0 - ties in x) (n0 - ties in y)), n0 = n (n - 1) / 2, as
    scipy.stats.kendalltau; NaN where x or y is constant."""
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    n = x.shape[-1]
    flat_x, flat_y = x.reshape(-1, n), y.reshape(-1, n)
    out = np.empty(flat_x.shape[0])
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    step = max(1, _PAIRS_PER_BLOCK // (n * n))
    for r0 in range(0, out.size, step):
        sx = np.sign(flat_x[r0:r0 + step, :, None] - flat_x[r0:r0 + step, None, :])[:, upper]
        sy = np.sign(flat_y[r0:r0 + step, :, None] - flat_y[r0:r0 + step, None, :])[:, upper]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[r0:r0 + step] = (sx * sy).sum(axis=1) / np.sqrt(
                np.count_nonzero(sx, axis=1).astype(float) * np.count_nonzero(sy, axis=1))
    return out.reshape(x.shape[:-1])


def _slopes_r2(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OLS slope and R^2 of each row pair (closed form; NaN where x or y is constant)."""
    dx = x - x.mean(axis=-1, keepdims=True)
    dy = y - y.mean(axis=-1, keepdims=True)
    sxy, sxx, syy = (dx * dy).sum(axis=-1), (dx * dx).sum(axis=-1), (dy * dy).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sxx > 0, sxy / sxx, np.nan), np.where((sxx > 0) & (syy > 0), sxy**2 / (sxx * syy), np.nan)


def _uncertainty(x: np.ndarray, y: np.ndarray, names: np.ndarray, result, level: float) -> dict:
    """The interval, bootstrap and leave-one-out columns of one regression (module docstring)."""
    slope_lo, slope_hi = (float(v) for v in np.asarray(result.conf_int(alpha=1.0 - level))[1])
    cooks = np.asarray(result.get_influence().cooks_distance[0], dtype=np.float64)
    out = {"slope_lo": slope_lo, "slope_hi": slope_hi}
    if np.all(np.isfinite(cooks)):
        out.update(max_cooks_d=float(cooks.max()), most_influential=str(names[int(np.argmax(cooks))]))
    n = x.size
    index = np.random.default_rng(0).integers(0, n, size=(RESAMPLES, n))
    _, r2 = _slopes_r2(x[index], y[index])
    out["r2_lo"], out["r2_hi"] = percentile_interval(r2, level)
    out["kendall_tau_lo"], out["kendall_tau_hi"] = percentile_interval(kendall_tau_b(x[index], y[index]), level)
    keep = ~np.eye(n, dtype=bool)  # row i: every model but i
    loo_x, loo_y = x[None, :].repeat(n, 0)[keep].reshape(n, n - 1), y[None, :].repeat(n, 0)[keep].reshape(n, n - 1)
    loo_slope, _ = _slopes_r2(loo_x, loo_y)
    loo_tau = kendall_tau_b(loo_x, loo_y)
    for key, values in (("loo_slope", loo_slope), ("loo_kendall_tau", loo_tau)):
        finite = values[np.isfinite(values)]
        if finite.size:
            out[f"{key}_min"], out[f"{key}_max"] = float(finite.min()), float(finite.max())
    return out


def regress_one(x, y, names=None, *, level: float = FitSettings.level) -> dict[str, float | int | str]:
    """OLS of ``y`` (accuracy) on ``x`` (one metric) with the correlation statistics and their
    uncertainty (module docstring); ``names`` are the models' (default: their positions).

    Pairs where either value is not finite are dropped. Returns a dict with the keys of
    REGRESSION_COLUMNS after ``series`` and ``metric``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    names = np.asarray([str(i) for i in range(x.size)] if names is None else [str(v) for v in names], dtype=object)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, names = x[keep], y[keep], names[keep]
    order = np.lexsort((names, y, x))  # a canonical order: the bootstrap ignores the table's row order
    x, y, names = x[order], y[order], names[order]
    n = int(x.size)
    out: dict[str, float | int | str] = {"n": n, **{k: math.nan for k in _STAT_COLUMNS}, "most_influential": ""}
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
            out.update(_uncertainty(x, y, names, result, level))
    return out


def ols_band(x, y, grid, *, level: float = FitSettings.level) -> tuple[np.ndarray, np.ndarray]:
    """statsmodels' confidence band at ``level`` of the OLS line of y on x, at the points ``grid``
    (NaN when the regression has no statistics, see :func:`regress_one`)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, grid = x[keep], y[keep], np.asarray(grid, dtype=np.float64)
    if x.size < MIN_N or np.ptp(x) == 0.0:
        return np.full(grid.shape, np.nan), np.full(grid.shape, np.nan)
    import statsmodels.api as sm

    result = sm.OLS(y, sm.add_constant(x, has_constant="add")).fit()
    band = np.asarray(result.get_prediction(sm.add_constant(grid, has_constant="add")).conf_int(alpha=1.0 - level))
    return band[:, 0], band[:, 1]


def regress(models: pd.DataFrame, metrics: Sequence[str] | None = None, *,
            level: float = FitSettings.level) -> pd.DataFrame:
    """Regress accuracy on each metric, per series.

    Parameters
    ----------
    models
        One row per model with the columns ``model``, ``series``, ``accuracy`` and one numeric
        column per metric (other columns are allowed).
    metrics
        The metric columns to regress on, in output order. ``None``: every numeric column other
        than the descriptive ones, in table order (zooscope.analysis.aggregate.metric_columns).
    level
        Confidence level of the intervals.

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

    # A table with a ``status`` column (models.tsv): failed models are left out, and counted.
    failed = (models["status"].astype(str) == "failed").to_numpy() if "status" in models else np.zeros(len(models), bool)

    rows = []
    for series in sorted(set(series_text[has_series])):
        in_series = has_series & (series_text == series)
        used = in_series & ~failed
        y = accuracy[used]
        names = models["model"].to_numpy(dtype=object)[used]
        for metric in chosen:
            x = _as_float(models[metric])[used]
            rows.append({"series": series, "metric": metric, **regress_one(x, y, names, level=level),
                         "num_left_out": int(np.sum(in_series & failed))})

    table = pd.DataFrame(rows, columns=list(REGRESSION_COLUMNS))
    table = table.astype({"series": object, "metric": object, "n": np.int64, "num_left_out": np.int64,
                          "most_influential": object})
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
