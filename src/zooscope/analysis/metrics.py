"""Per-layer metrics from eigenvalues, and the per-model summary (docs/method.md, "Per matrix").

Every reported log is base 10. A matrix that cannot be fitted still gets a row, with ``status``
("skipped": too few eigenvalues; "failed": bad weights or a degenerate spectrum) and ``reason``.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from zooscope.analysis.delta import (
    DELTA_COLUMNS, DELTA_INTEGER_COLUMNS, DELTA_TEXT_COLUMNS, delta_cells, delta_columns_of, delta_counts,
    delta_summary,
)
from zooscope.config import FitSettings
from zooscope.fits.bootstrap import bootstrap_fit, percentile_interval, power_law_refit
from zooscope.fits.fingers import FINGERS, clip_fingers, peak_xmin_range
from zooscope.fits.goodness import ALTERNATIVES, REJECT_BELOW, compare_alternatives, power_law_p_value
from zooscope.fits.powerlaw import PowerLawFit, fit_sorted, sorted_above_floor
from zooscope.spectra.random_matrix import esd_distance, fit_marchenko_pastur
from zooscope.fits.truncated import (
    FIT_KINDS, TailFit, fit_exp_truncated_power_law, fit_truncated_power_law, power_law_loglik,
)

if TYPE_CHECKING:
    import pandas as pd

# Columns of results/metrics/{model}/layers.tsv, in order (docs/statistics.md has the uncertainty ones).
LAYER_COLUMNS = (
    "layer", "slice", "type", "depth", "N", "M", "num_evals", "lambda_max", "alpha", "alpha_lo", "alpha_hi",
    "xmin", "xmin_lo", "xmin_hi", "xmax", "D", "sigma", "num_pl_spikes", "num_fingers_clipped", "pl_p_value",
    *(f"lr_{name}{suffix}" for name in ALTERNATIVES for suffix in ("", "_p")),
    "log_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm", "stable_rank", "fit_kind", "truncation",
    "loglik", "mp_bulk_edge", "mp_softrank", "num_spikes", "rand_distance", "num_traps", "warning", "verdict",
    "status", "reason",
)
# Per-layer quantities averaged into the model summary (over rows with status "ok").
SUMMARY_METRICS = (
    "alpha", "alpha_weighted", "log_alpha_norm", "log_norm", "log_spectral_norm", "stable_rank",
    "D", "sigma", "num_pl_spikes", "lambda_max", "mp_softrank", "num_spikes", "rand_distance", "num_traps",
)
# The metrics that depend on the fitted alpha: the summary also gives their mean over the reliable
# rows only (``{metric}_reliable``) and a bootstrap interval of their model mean (``_lo``, ``_hi``).
FIT_METRICS = ("alpha", "alpha_weighted", "log_alpha_norm")
RELIABLE_METRICS = tuple(f"{metric}_reliable" for metric in FIT_METRICS)
INTERVAL_COLUMNS = tuple(f"{metric}{end}" for metric in FIT_METRICS for end in ("_lo", "_hi"))
# Integer columns (nullable: empty where a row has no fit) and text columns (empty, never missing).
INTEGER_COLUMNS = ("depth", "N", "M", "num_evals", "num_pl_spikes", "num_fingers_clipped", "num_spikes", "num_traps")
TEXT_COLUMNS = ("slice", "fit_kind", "warning", "verdict", "reason")
# The alpha band of a well-trained layer (docs/method.md, "Per matrix"): alpha below 2 is
# over-trained, above 6 under-trained. The one definition: the warning and verdict columns, the
# audit's words, and the lines of the correlation-flow figure all read these.
OVER_TRAINED_BELOW = 2.0
UNDER_TRAINED_ABOVE = 6.0
#: The verdicts of a fitted row (docs/statistics.md, "Verdicts"); unfitted rows have none ("").
VERDICTS = ("well-trained", "over-trained", "under-trained", "uncertain", "no power law")
#: The verdicts of reliable rows: decided by the whole interval, with the power law not rejected.
RELIABLE_VERDICTS = VERDICTS[:3]
# A row's bootstrap replicates travel under this key from layer_rows to summarize (not a column).
REPLICATES = "replicates"


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
    """WeightWatcher's warning from the point estimate alone (docs/method.md): see :func:`verdict_for`."""
    if alpha < OVER_TRAINED_BELOW:
        return "over-trained"
    if alpha > UNDER_TRAINED_ABOVE:
        return "under-trained"
    return ""


def verdict_for(alpha: float, alpha_lo: float = math.nan, alpha_hi: float = math.nan,
                pl_p_value: float = math.nan, *, kind: str = "pl") -> str:
    """The verdict of a fitted row (docs/statistics.md, "Verdicts").

    ``no power law`` when the power law's p-value rejects it (below 0.1, fit kind pl only: tpl and
    etpl are other models); else ``over-trained`` / ``under-trained`` when the whole interval
    [alpha_lo, alpha_hi] is below 2 / above 6, ``well-trained`` when it lies within [2, 6], and
    ``uncertain`` when it straddles a bound. Without an interval (no bootstrap) the point alpha
    stands for it.
    """
    if kind == "pl" and pl_p_value < REJECT_BELOW:
        return "no power law"
    lo, hi = (alpha_lo, alpha_hi) if math.isfinite(alpha_lo) and math.isfinite(alpha_hi) else (alpha, alpha)
    if hi < OVER_TRAINED_BELOW:
        return "over-trained"
    if lo > UNDER_TRAINED_ABOVE:
        return "under-trained"
    if lo >= OVER_TRAINED_BELOW and hi <= UNDER_TRAINED_ABOVE:
        return "well-trained"
    return "uncertain"


@dataclass(frozen=True)
class _Tail:
    """A tail fit with what its uncertainty needs: the pure power-law fit (goodness of fit and
    the likelihood ratios test it), the values it saw (sorted, above the floor, fingers clipped)
    and its candidate xmins."""

    fit: TailFit
    power_law: PowerLawFit
    values: np.ndarray
    xmin_range: tuple[float, float] | None
    num_clipped: int


def _analyse_tail(values: np.ndarray, kind: str, floor: float, fingers: str | None) -> _Tail:
    _check_kind(kind)
    _check_fingers(fingers)
    x = sorted_above_floor(values, floor)
    xmin_range = peak_xmin_range(x, floor=floor) if fingers == "xmin_peak" else None
    if fingers == "clip_xmax":
        clipped = clip_fingers(x)
        x, pl, num_clipped = clipped.values, clipped.fit, clipped.num_clipped
    else:
        pl, num_clipped = fit_sorted(x, xmin_range), 0
    if kind == "etpl":
        fit = fit_exp_truncated_power_law(x, floor=floor)
    elif kind == "tpl":
        fit = fit_truncated_power_law(x, xmin=pl.xmin)
    else:
        fit = TailFit(kind="pl", alpha=pl.alpha, xmin=pl.xmin, xmax=pl.xmax, D=pl.D, sigma=pl.sigma,
                      num_pl_spikes=pl.num_pl_spikes, truncation=math.nan,
                      loglik=power_law_loglik(x[x >= pl.xmin], pl.alpha, pl.xmin))
    return _Tail(fit=fit, power_law=pl, values=x, xmin_range=xmin_range, num_clipped=num_clipped)


def fit_tail(values: np.ndarray, *, kind: str = FitSettings.kind, floor: float = FitSettings.floor,
             fingers: str | None = FitSettings.fingers) -> TailFit:
    """The tail fit of config ``fit.kind``: ``pl`` (pure power law, Clauset et al.), ``tpl``
    (truncated at lambda_max, on the pure fit's tail) or ``etpl`` (exponentially truncated, from
    the ESD peak); see zooscope.fits.truncated. ``fingers`` (config ``fit.fingers``): None,
    ``xmin_peak`` or ``clip_xmax`` (zooscope.fits.fingers)."""
    return _analyse_tail(np.asarray(values, dtype=np.float64), kind, floor, fingers).fit


def _check_kind(kind: str) -> None:
    if kind not in FIT_KINDS:
        raise ValueError(f"unknown fit kind {kind!r}; valid: {', '.join(FIT_KINDS)} (config fit.kind)")


def _check_fingers(fingers: str | None) -> None:
    if fingers is not None and fingers not in FINGERS:
        raise ValueError(f"unknown fit.fingers {fingers!r}; valid: null, {', '.join(FINGERS)} (config fit.fingers)")


def _refit(tail: _Tail):
    """What a bootstrap resample refits: the same procedure as the point estimate (None: etpl,
    whose refits cost a numerical optimisation each, gets no interval). Batched: a function of
    the (resamples x K) sorted draws."""
    def pl(samples):
        return power_law_refit(samples, tail.xmin_range)

    def tpl(samples):
        xmins = power_law_refit(samples, tail.xmin_range)[1]
        alphas = np.full(xmins.size, np.nan)
        for r, (x, xmin) in enumerate(zip(samples, xmins)):
            if not np.isfinite(xmin):  # a degenerate resample has no fit
                continue
            try:
                alphas[r] = fit_truncated_power_law(x, xmin=xmin).alpha
            except ValueError:  # nor a degenerate resampled tail
                continue
        return alphas, xmins

    return {"pl": pl, "tpl": tpl}.get(tail.fit.kind)


def _uncertainty_columns(tail: _Tail, values: np.ndarray, fit: FitSettings, seed) -> dict:
    """The interval, goodness-of-fit and likelihood-ratio columns of one fitted row (as much as
    ``fit``'s bootstrap, gof and alternatives ask for), and the bootstrap replicates of its fit
    metrics (under REPLICATES) for the model's intervals.

    ``seed``: entropy of numpy's SeedSequence; the bootstrap and the p-value draw from two
    independent streams spawned from it.
    """
    row: dict = {}
    boot_seed, gof_seed = np.random.SeedSequence(seed).spawn(2)
    refit = _refit(tail)
    if fit.bootstrap and refit is not None:
        ci = bootstrap_fit(tail.values, resamples=fit.bootstrap, level=fit.level, seed=boot_seed, refit=refit)
        row.update(alpha_lo=ci.alpha_lo, alpha_hi=ci.alpha_hi, xmin_lo=ci.xmin_lo, xmin_hi=ci.xmin_hi)
        row[REPLICATES] = {metric: fit_metric_values(values, ci.alphas)[metric] for metric in FIT_METRICS}
    if fit.gof:
        row["pl_p_value"] = power_law_p_value(tail.values, tail.power_law, resamples=fit.gof, seed=gof_seed,
                                              xmin_range=tail.xmin_range).p_value
    if fit.alternatives:
        for name, test in compare_alternatives(tail.values, tail.power_law).items():
            row[f"lr_{name}"], row[f"lr_{name}_p"] = test.R, test.p
    return row


def fit_metric_values(values: np.ndarray, alpha):
    """alpha_weighted and log_alpha_norm of a spectrum for alpha (a float or an array of them).

    log10 sum lambda^alpha is computed as log10(lambda_max^alpha * sum (lambda/lambda_max)^alpha),
    so that large alphas cannot overflow.
    """
    lambda_max = float(values[-1])
    ratios = values[values > 0] / lambda_max
    alphas = np.asarray(alpha, dtype=np.float64)
    log_lmax = math.log10(lambda_max)
    sums = np.sum(ratios[None, :] ** alphas.reshape(-1, 1), axis=1).reshape(alphas.shape)
    out = {"alpha": alphas, "alpha_weighted": alphas * log_lmax, "log_alpha_norm": alphas * log_lmax + np.log10(sums)}
    return {key: float(value) for key, value in out.items()} if alphas.ndim == 0 else out


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


def spectrum_metrics(values: np.ndarray, fit: FitSettings = FitSettings(), *, shape: tuple[int, int] | None = None,
                     randomized: np.ndarray | None = None, seed=None) -> dict:
    """All metrics of one matrix's eigenvalues (ascending), with ``status`` and ``reason``.

    ``fit``: config ``fit:``, the tail fit and its uncertainty (docs/statistics.md;
    ``fit.without_uncertainty()`` for the point estimates alone). ``shape`` (N, M) of the matrix
    adds the MP columns, ``randomized`` (the ESD of the shuffled matrix) the randomization check;
    fitted rows only. ``seed`` seeds the uncertainty's draws (None: a hash of the eigenvalues). An
    unknown ``fit.kind`` or ``fit.fingers`` is an error of the caller, not a failed row.
    """
    _check_kind(fit.kind)
    _check_fingers(fit.fingers)
    values = np.asarray(values, dtype=np.float64)
    row: dict = {"num_evals": int(values.size), "status": "ok", "reason": "", "warning": "", "verdict": ""}
    if values.size == 0 or not values[-1] > 0:
        row.update(status="failed", reason="degenerate spectrum: all eigenvalues are zero")
        return row
    row.update(norm_metrics(values))
    if values.size < fit.min_evals:
        row.update(status="skipped", reason=f"{values.size} eigenvalues < min_evals={fit.min_evals}")
        return row
    try:
        tail = _analyse_tail(values, fit.kind, fit.floor, fit.fingers)
    except ValueError as error:
        row.update(status="failed", reason=str(error))
        return row
    tail_fit = tail.fit
    row.update(
        alpha=tail_fit.alpha,
        xmin=tail_fit.xmin,
        xmax=tail_fit.xmax,
        D=tail_fit.D,
        sigma=tail_fit.sigma,
        num_pl_spikes=tail_fit.num_pl_spikes,
        num_fingers_clipped=tail.num_clipped,
        fit_kind=tail_fit.kind,
        truncation=tail_fit.truncation,
        loglik=tail_fit.loglik,
        **{key: value for key, value in fit_metric_values(values, tail_fit.alpha).items() if key != "alpha"},
        warning=warning_for(tail_fit.alpha),
    )
    if seed is None:
        seed = int.from_bytes(hashlib.sha256(values.tobytes()).digest()[:16], "big")
    row.update(_uncertainty_columns(tail, values, fit, seed))
    row["verdict"] = verdict_for(tail_fit.alpha, row.get("alpha_lo", math.nan), row.get("alpha_hi", math.nan),
                                 row.get("pl_p_value", math.nan), kind=tail_fit.kind)
    if shape is not None:
        row.update(random_matrix_metrics(values, shape, randomized))
    return row


def layer_columns(index: Mapping) -> tuple[str, ...]:
    """The layers.tsv columns of an esd index: LAYER_COLUMNS, then DELTA_COLUMNS for a model with a
    base (zooscope.analysis.delta)."""
    return (*LAYER_COLUMNS, *DELTA_COLUMNS) if "delta" in index else LAYER_COLUMNS


def layer_rows(index: dict, load_eigenvalues, fit: FitSettings = FitSettings(), *, workers: int = 1) -> list[dict]:
    """One row per matrix of every layer of an esd index (see zooscope.spectra.esd), as dicts with every
    key of :func:`layer_columns`: None where a metric does not apply, "" for an empty text column; a
    row with bootstrap replicates also carries them under REPLICATES (for :func:`summarize`).

    ``load_eigenvalues(record)`` gives a record's eigenvalue array; for a record with a
    ``rand_file``, ``load_eigenvalues(record, randomized=True)`` the shuffled matrices' one.
    ``fit``: config ``fit:``. The uncertainty's draws of each matrix are seeded by its record's
    ``key`` (the layer's weights hash with the spectrum settings) and its slice number, so reruns
    are byte-identical. ``workers`` > 1 fits the layers in that many forked processes (config
    ``threads.fit``): the fits are Python and numpy on small arrays, bound by the interpreter, so
    threads would not run them in parallel; each layer's rows are the same either way, and so is
    their order. Plain dicts, not a DataFrame: the fit job then needs no pandas (a third of its
    start-up).
    """
    records = index["layers"]
    fitted = sum(record["status"] == "ok" for record in records)
    from threadpoolctl import threadpool_limits

    # One BLAS thread: the fits' arrays are small, and with the job's threads the idle BLAS threads
    # spin on the cores the fits need (2 forked workers: 6 times the CPU time). scipy has a BLAS of
    # its own, loaded when first imported: imported here, before the limit, so that the limit binds
    # it too, also in the forked workers, which inherit the limited libraries.
    _import_fit_scipy(fit)
    with threadpool_limits(limits=1):
        if workers > 1 and fitted > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork: the workers inherit the records, the loader and the settings (any callable,
            # none pickled) and get only a record's position
            global _FORKED_WORK
            _FORKED_WORK = (records, load_eigenvalues, fit)
            try:
                with ProcessPoolExecutor(min(workers, fitted), mp_context=multiprocessing.get_context("fork")) as pool:
                    parts = list(pool.map(_forked_record_rows, range(len(records))))
            finally:
                _FORKED_WORK = None
        else:
            parts = [_record_rows(record, load_eigenvalues, fit) for record in records]
    rows = [row for part in parts for row in part]
    rows = [{**{column: row.get(column, "" if column in TEXT_COLUMNS else None) for column in LAYER_COLUMNS},
             **({REPLICATES: row[REPLICATES]} if REPLICATES in row else {})} for row in rows]
    if "delta" in index:
        # an update's point estimates (no intervals: the delta columns are means and ranks)
        cells = delta_cells(index["delta"], load_eigenvalues, partial(spectrum_metrics, fit=fit.without_uncertainty()))
        # the columns in layer_columns' order; a row's replicates stay last
        rows = [{**{key: value for key, value in row.items() if key != REPLICATES},
                 **delta_columns_of(cells, row["layer"], row["slice"]),
                 **({REPLICATES: row[REPLICATES]} if REPLICATES in row else {})} for row in rows]
    return rows


# what layer_rows' forked workers inherit: (records, load_eigenvalues, fit)
_FORKED_WORK = None


def _import_fit_scipy(fit: FitSettings) -> None:
    """Import the scipy modules the fits of ``fit`` will use (zooscope.fits imports them lazily:
    the power-law fits and their uncertainty statistics need none, and scipy.stats costs a job
    about a second)."""
    if fit.kind == "tpl":  # its root
        import scipy.optimize  # noqa: F401
    if fit.kind == "etpl" or fit.fingers == "xmin_peak":  # the ESD's peak: a Gaussian KDE
        import scipy.stats  # noqa: F401


def _forked_record_rows(position: int) -> list[dict]:
    records, load_eigenvalues, fit = _FORKED_WORK
    return _record_rows(records[position], load_eigenvalues, fit)


def _record_rows(record: dict, load_eigenvalues, fit: FitSettings) -> list[dict]:
    """The rows of one esd index record (:func:`layer_rows`), a row per matrix."""
    base = {"layer": record["name"], "type": record["type"], "depth": record["depth"],
            "N": record["N"], "M": record["M"]}
    if record["status"] != "ok":
        # the eigenvalues a matrix of it would have had: M (N >= M), where its shape is known
        return [{**base, "slice": "", "num_evals": record["M"], "status": record["status"],
                 "reason": record["reason"]}]
    values = load_eigenvalues(record)
    randomized = load_eigenvalues(record, randomized=True) if record.get("rand_file") else [None] * len(values)
    rows = []
    for number, (label, row_values, row_rand) in enumerate(zip(record["slices"], values, randomized, strict=True)):
        seed = [int(record["key"], 16), number] if record.get("key") else None
        rows.append({**base, "slice": label,
                     **spectrum_metrics(row_values, fit, shape=(record["N"], record["M"]), randomized=row_rand,
                                        seed=seed)})
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


def _mean(rows: list[Mapping], metric: str) -> float | None:
    present = [float(row[metric]) for row in rows if not _missing(row[metric])]
    return math.fsum(present) / len(present) if present else math.nan


def summarize(model: str, rows: Iterable[Mapping], delta: Mapping | None = None, *,
              level: float = FitSettings.level) -> dict:
    """The per-model summary: the plain mean of each metric over the rows that were fitted.

    ``rows``: the layer rows (:func:`layer_rows`). A metric missing (None or NaN) from some fitted
    rows is averaged over the others; NaN if it is missing from all. Sums are exact (math.fsum),
    so the mean does not depend on the order of the rows. The FIT_METRICS are also averaged over
    the reliable rows only (verdict in RELIABLE_VERDICTS: ``{metric}_reliable``), and their
    means get a percentile interval at ``level`` (``{metric}_lo``, ``_hi``): replicate r of the
    model mean is the mean of every fitted row's bootstrap replicate r (the rows' draws are
    independent); NaN unless every fitted row has replicates. ``delta``: the esd index's ``delta``
    section of a model with a base: the summary then has the delta means
    (zooscope.analysis.delta.delta_summary) and a ``delta`` entry (the base, layer counts by
    update status, the base's layers the model lacks).
    """
    rows = list(rows)
    fitted = [row for row in rows if row["status"] == "ok"]
    reliable = [row for row in fitted if row.get("verdict") in RELIABLE_VERDICTS]
    means = {metric: _mean(fitted, metric) if fitted else None for metric in SUMMARY_METRICS}
    for metric in FIT_METRICS:
        means[f"{metric}_reliable"] = _mean(reliable, metric) if fitted else None
        lo = hi = math.nan if fitted else None
        if fitted and all(REPLICATES in row for row in fitted):
            replicates = np.vstack([row[REPLICATES][metric] for row in fitted])
            # a degenerate resample (NaN) of one row leaves that replicate out of the mean
            lo, hi = percentile_interval(replicates.mean(axis=0), level)
        means[f"{metric}_lo"], means[f"{metric}_hi"] = lo, hi
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
        "num_reliable": len(reliable),
        "problems": layer_problems(rows),
        "metrics": means,
    }


def layer_problems(rows: Iterable[Mapping]) -> dict[str, dict[str, int]]:
    """The reasons of the rows that were not fitted, counted: {status: {reason: count}}, in
    sorted order (the run summary lists them, zooscope.report.run_summary)."""
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        if row["status"] != "ok":
            by_reason = counts.setdefault(row["status"], {})
            reason = row.get("reason") or ""
            by_reason[reason] = by_reason.get(reason, 0) + 1
    return {status: dict(sorted(reasons.items())) for status, reasons in sorted(counts.items())}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def read_layers_table(path) -> "pd.DataFrame":
    """Read a layers.tsv written by the fit stage, with text columns kept as text."""
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", dtype={"layer": str, **{column: str for column in (*TEXT_COLUMNS, *DELTA_TEXT_COLUMNS)}})
    for column in (*TEXT_COLUMNS, *DELTA_TEXT_COLUMNS):
        if column in frame:
            frame[column] = frame[column].fillna("")
    return frame
