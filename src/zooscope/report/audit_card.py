"""Per-model audit: layer verdicts, correlation traps and scale collapse, in a table
(results/{zoo}/audit.tsv) and in plain words (an audit card per model, and a zoo summary that says
which metrics separate each label-noise series, from discrimination.tsv).

Scale collapse (Martin, Peng & Mahoney 2021: GPT against GPT-2, whose layers have smaller spectral norms and larger
alphas). A fitted matrix of a model *collapses* when, against the pooled fitted matrices of every
model of its series, its log_spectral_norm lies more than COLLAPSE_MARGIN (half a decade: a
lambda_max over 3x smaller) below the series median while its alpha lies above the series median
alpha. A model is flagged ``scale_collapse`` when at least COLLAPSE_FRACTION of its fitted matrices
collapse, in a series of at least two models with fitted matrices (one model has nothing to be
compared with). docs/method.md states the same rule.

Cards and the summary are built once as a list of blocks and written both as Markdown (the card)
and as HTML (the report shows HTML, not Markdown), so the two never say different things.
"""
from __future__ import annotations

import html
import math
from typing import Mapping

import numpy as np
import pandas as pd

from zooscope.config import FitSettings
from zooscope.analysis.discrimination import separating_metrics
from zooscope.analysis.metrics import OVER_TRAINED_BELOW, RELIABLE_VERDICTS, UNDER_TRAINED_ABOVE
from zooscope.fits.goodness import REJECT_BELOW

__all__ = ["AUDIT_COLUMNS", "COLLAPSE_MARGIN", "COLLAPSE_FRACTION", "audit_table", "card_blocks",
           "discrimination_sentences", "summary_blocks", "to_markdown", "to_html"]

COLLAPSE_MARGIN = 0.5
# The alpha band as the words print it ("2", "6")
OVER, UNDER = f"{OVER_TRAINED_BELOW:g}", f"{UNDER_TRAINED_ABOVE:g}"
COLLAPSE_FRACTION = 0.5
# The count column of each verdict of a fitted matrix (zooscope.analysis.metrics.VERDICTS).
VERDICT_COUNTS = {"well-trained": "num_well_trained", "under-trained": "num_under_trained",
                  "over-trained": "num_over_trained", "uncertain": "num_uncertain", "no power law": "num_no_power_law"}
AUDIT_COLUMNS = (
    "model", "series", "num_matrices", *VERDICT_COUNTS.values(), "num_reliable",
    "num_with_traps", "num_traps", "num_collapsed", "scale_collapse", "alpha", "alpha_lo", "alpha_hi",
    "alpha_reliable", "series_median_alpha", "log_spectral_norm", "series_median_log_spectral_norm",
    "status", "failed_stage", "reason",
)
# The columns of models.tsv that say whether a model completed (zooscope.analysis.aggregate).
STATUS_COLUMNS = ("status", "failed_stage", "reason")


def _fitted(layers: pd.DataFrame) -> pd.DataFrame:
    ok = layers[layers["status"].astype(str) == "ok"]
    return ok.assign(alpha=pd.to_numeric(ok["alpha"], errors="coerce"),
                     log_spectral_norm=pd.to_numeric(ok["log_spectral_norm"], errors="coerce"),
                     num_traps=pd.to_numeric(ok["num_traps"], errors="coerce"))


def audit_table(series_of: Mapping[str, str], layers_by_model: Mapping[str, pd.DataFrame],
                intervals: Mapping[str, tuple[float, float]] | None = None,
                status_of: Mapping[str, tuple[str, str, str]] | None = None) -> pd.DataFrame:
    """One row per model (in the order of ``series_of``: model -> series) with the counts of its
    layer verdicts (layers.tsv's ``verdict``: docs/statistics.md), correlation traps (matrices
    whose shuffled ESD has eigenvalues above its MP bulk, and their total) and scale collapse (see
    the module docstring). ``layers_by_model`` holds each model's layers.tsv; ``intervals`` maps a
    model to the interval of its mean alpha (models.tsv's alpha_lo, alpha_hi), NaN without;
    ``status_of`` each model's (status, failed_stage, reason) from models.tsv (None: every model ok)."""
    intervals = intervals or {}
    fitted = {model: _fitted(layers_by_model[model]) for model in series_of}
    references = {}
    for series in set(series_of.values()):
        members = [model for model, name in series_of.items() if name == series and len(fitted[model])]
        pooled = pd.concat([fitted[model] for model in members]) if members else None
        references[series] = (
            len(members),
            float(pooled["alpha"].median()) if members else math.nan,
            float(pooled["log_spectral_norm"].median()) if members else math.nan,
        )
    rows = []
    for model, series in series_of.items():
        frame = fitted[model]
        n_models, ref_alpha, ref_norm = references[series]
        alpha, norm = frame["alpha"].to_numpy(float), frame["log_spectral_norm"].to_numpy(float)
        traps = frame["num_traps"].to_numpy(float)
        checked = np.isfinite(traps)  # without esd.randomize (the default) no matrix was checked
        verdicts = frame["verdict"].astype(str)
        reliable = verdicts.isin(RELIABLE_VERDICTS).to_numpy()
        collapsed = int(np.sum((norm < ref_norm - COLLAPSE_MARGIN) & (alpha > ref_alpha)))
        lo, hi = intervals.get(model, (math.nan, math.nan))
        rows.append({
            "model": model, "series": series, "num_matrices": len(frame),
            **{column: int(np.sum(verdicts == verdict)) for verdict, column in VERDICT_COUNTS.items()},
            "num_reliable": int(reliable.sum()),
            "num_with_traps": int(np.sum(traps[checked] > 0)) if checked.any() else None,
            "num_traps": int(np.sum(traps[checked])) if checked.any() else None,
            "num_collapsed": collapsed,
            "scale_collapse": bool(n_models >= 2 and len(frame) and collapsed >= COLLAPSE_FRACTION * len(frame)),
            "alpha": float(np.mean(alpha)) if len(frame) else math.nan,
            "alpha_lo": float(lo), "alpha_hi": float(hi),
            "alpha_reliable": float(np.mean(alpha[reliable])) if reliable.any() else math.nan,
            "series_median_alpha": ref_alpha,
            "log_spectral_norm": float(np.mean(norm)) if len(frame) else math.nan,
            "series_median_log_spectral_norm": ref_norm,
            **dict(zip(STATUS_COLUMNS, (status_of or {}).get(model, ("ok", "", "")))),
        })
    return pd.DataFrame(rows, columns=list(AUDIT_COLUMNS))


# ------------------------------------------------------------------------------- words


def _missing(value) -> bool:
    """An empty cell: None, or NaN once the table went through pandas."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _list(names: list[str]) -> str:
    if not names:
        return "none"
    return ", ".join(f"`{name}`" for name in names)


def _taus(table: pd.DataFrame, series: str, names: list[str]) -> str:
    rows = table[table["series"].astype(str) == str(series)].set_index("metric")
    return ", ".join(f"`{name}` (tau = {float(rows.loc[name, 'kendall_tau']):+.2f}, "
                     f"{rows.loc[name, 'direction']})" for name in names) or "none"


def discrimination_sentences(table: pd.DataFrame, series: str) -> list[str]:
    """What discrimination.tsv says about one noise series, in words."""
    rows = table[table["series"].astype(str) == str(series)]
    if rows.empty:
        return []
    separate, partly, rest = separating_metrics(table, series)
    n = int(rows["n"].max())
    low, high = float(rows["noise_min"].min()), float(rows["noise_max"].max())
    return [
        f"Series `{series}` is a label-noise ladder: {_count(n, 'model')} trained with {low:.0%} to {high:.0%} "
        f"of their training labels shuffled.",
        f"Metrics that rank its models exactly by noise level (|Kendall tau| = 1): {_taus(table, series, separate)}.",
        f"Metrics that rank them partly (0.5 <= |tau| < 1): {_taus(table, series, partly)}.",
        f"Metrics that do not tell them apart (|tau| < 0.5, or constant): {_list(rest)}.",
    ]


def verdict_rules(level: float) -> str:
    """The verdict rules in words (docs/statistics.md, "Verdicts")."""
    return (f"Each fitted matrix gets a verdict from the {level:.0%} bootstrap interval of its alpha: over-trained "
            f"when the whole interval is below {OVER}, under-trained when it is all above {UNDER}, well-trained "
            f"when it lies within [{OVER}, {UNDER}], "
            f"uncertain when it straddles a bound (the spectrum is too small or too noisy to tell), and no power "
            f"law when the goodness-of-fit test rejects a power-law tail (p < {REJECT_BELOW:g}), so that its alpha "
            f"describes nothing. Only the first three are reliable. (Without a bootstrap, fit.bootstrap 0, the point "
            f"alpha stands for the interval.)")


def _verdict(row: Mapping) -> str:
    n = int(row["num_matrices"])
    if row.get("status") == "failed":  # (an "unfitted" model is told below: n == 0)
        return f"This model has no result: its {row['failed_stage']} stage failed ({row['reason']})."
    if n == 0:
        return "No matrix of this model could be fitted, so its spectra say nothing about its training."
    parts = [f"Of its {n} fitted {'matrix' if n == 1 else 'matrices'} (layers, or slices of Conv2D layers): "
             f"well-trained {row['num_well_trained']}, under-trained {row['num_under_trained']}, "
             f"over-trained {row['num_over_trained']}, uncertain {row['num_uncertain']}, "
             f"no power law {row['num_no_power_law']}."]
    decided = int(row["num_reliable"])
    if decided == 0:
        parts.append("None of its verdicts is reliable: its spectra cannot tell how well it is trained.")
    elif decided < n:
        parts.append(f"So {_count(decided, 'verdict')} of {n} {'is' if decided == 1 else 'are'} reliable; the "
                     f"others say that the data cannot tell.")
    if _missing(row["num_with_traps"]):
        parts.append("Correlation traps were not checked (the randomization check, config esd.randomize, is off).")
    elif row["num_with_traps"]:
        parts.append(f"With correlation traps: {row['num_with_traps']} (their shuffled weights still have "
                     f"{_count(int(row['num_traps']), 'eigenvalue')} above the Marchenko-Pastur bulk in all, "
                     f"so a few large entries dominate them).")
    else:
        parts.append("None has correlation traps (the shuffled weights stay inside the Marchenko-Pastur bulk).")
    return " ".join(parts)


def _mean_alpha(row: Mapping, level: float) -> str:
    text = f"{row['alpha']:.2f}"
    if math.isfinite(row["alpha_lo"]) and math.isfinite(row["alpha_hi"]):
        text += f" ({level:.0%} interval {row['alpha_lo']:.2f} to {row['alpha_hi']:.2f})"
    if math.isfinite(row["alpha_reliable"]):
        n = int(row["num_reliable"])
        text += f"; over its {n} reliable {'matrix' if n == 1 else 'matrices'} it is {row['alpha_reliable']:.2f}"
    else:
        text += "; it has no reliable matrix to average over"
    return text


def _comparison(row: Mapping, audit: pd.DataFrame, level: float) -> str:
    peers = audit[audit["series"] == row["series"]]
    if not math.isfinite(row["alpha"]):
        return f"It has no fitted layers, so it is not compared with series `{row['series']}`."
    if len(peers) < 2:
        return (f"Its mean alpha is {_mean_alpha(row, level)}. It is the only model of series `{row['series']}` "
                f"with fitted layers, so it is not compared.")
    order = peers.sort_values(["alpha", "model"], kind="stable")["model"].tolist()
    place = order.index(row["model"]) + 1
    side = "below" if row["alpha"] < row["series_median_alpha"] else "above"
    return (f"Its mean alpha, {_mean_alpha(row, level)}, is {side} the median of its series `{row['series']}` "
            f"({row['series_median_alpha']:.2f} over all fitted matrices); it ranks {place} of {len(order)} "
            f"by mean alpha (1 = smallest, which the theory reads as best trained).")


def _collapse(row: Mapping) -> str:
    if row["scale_collapse"]:
        return (f"Scale collapse: {row['num_collapsed']} of its {row['num_matrices']} matrices have spectral "
                f"norms more than {COLLAPSE_MARGIN:g} decade below its series' median while their alphas are "
                f"above it, the pattern of a poorly trained model (Martin, Peng & Mahoney 2021: GPT against GPT-2).")
    return (f"No scale collapse ({row['num_collapsed']} of {row['num_matrices']} matrices have a collapsed spectral "
            f"norm together with a larger alpha; the flag needs {COLLAPSE_FRACTION:.0%}).")


def card_blocks(model: str, audit: pd.DataFrame, discrimination: pd.DataFrame,
                noise: float | None = None, *, level: float = FitSettings.level,
                layers: pd.DataFrame | None = None, base: str | None = None) -> list[tuple]:
    """The audit card of one model as blocks (heading, paragraphs, a table); ``level`` is that of
    the intervals (config fit.level). A model with a ``base`` also gets the words on its update
    (zooscope.report.update_card), from its ``layers`` (layers.tsv with the delta_ columns)."""
    row = audit.set_index("model", drop=False).loc[model].to_dict()
    blocks: list[tuple] = [("h1", f"Audit card: {model}"),
                           ("p", f"Series `{row['series']}`" + (f", trained with {noise:.0%} of its labels shuffled." if noise is not None
                                                                 else "."))]
    blocks += [("h2", "What its spectra show"), ("p", _verdict(row)), ("p", verdict_rules(level)),
               ("p", _collapse(row)), ("p", _comparison(row, audit, level))]
    if base is not None and layers is not None and "delta_status" in layers:
        from zooscope.report.update_card import update_blocks

        blocks += update_blocks(layers, base)
    sentences = discrimination_sentences(discrimination, row["series"])
    if sentences:
        blocks += [("h2", "Its series as a good-versus-bad test"), ("ul", sentences)]
    peers = audit[audit["series"] == row["series"]]
    blocks += [("h2", "Its series"), _audit_rows(peers)]
    return blocks


def _audit_rows(audit: pd.DataFrame) -> tuple:
    header = ["model", "fitted", "well", "under", "over", "uncertain", "no power law", "with traps", "collapsed",
              "scale collapse", "mean alpha", "interval", "mean alpha (reliable)"]

    def number(value, fmt="{:.2f}"):
        return fmt.format(value) if math.isfinite(value) else "-"

    rows = [[r.model, r.num_matrices, r.num_well_trained, r.num_under_trained, r.num_over_trained, r.num_uncertain,
             r.num_no_power_law, "-" if _missing(r.num_with_traps) else int(r.num_with_traps), r.num_collapsed,
             "yes" if r.scale_collapse else "no",
             number(r.alpha), f"{number(r.alpha_lo)} to {number(r.alpha_hi)}" if math.isfinite(r.alpha_lo) else "-",
             number(r.alpha_reliable)] for r in audit.itertuples(index=False)]
    return ("table", header, rows)


def summary_blocks(audit: pd.DataFrame, discrimination: pd.DataFrame, *,
                   level: float = FitSettings.level) -> list[tuple]:
    """The zoo summary: which metrics separate each label-noise series, the models with scale
    collapse, and every model's layer verdicts, with how many of them are reliable."""
    blocks: list[tuple] = [("h1", "Zoo summary")]
    noise_series = sorted(discrimination["series"].astype(str).unique())
    blocks.append(("h2", "Good versus bad: which metrics separate the label-noise series"))
    if not noise_series:
        blocks.append(("p", "No series of this zoo has models with a label_noise option, so no metric was "
                            "tested on a good-versus-bad ladder (the zoo's discrimination.tsv is empty)."))
    for series in noise_series:
        blocks.append(("ul", discrimination_sentences(discrimination, series)))
    collapsed = audit.loc[audit["scale_collapse"].astype(bool), "model"].tolist()
    blocks += [("h2", "Scale collapse"),
               ("p", f"Models flagged: {_list(collapsed)}." if collapsed else "No model shows scale collapse.")]
    blocks += [("h2", "Layer verdicts per model"), ("p", verdict_rules(level)), ("p", _zoo_verdicts(audit)),
               _audit_rows(audit)]
    return blocks


def _zoo_verdicts(audit: pd.DataFrame) -> str:
    total = int(audit["num_matrices"].sum())
    if total == 0:
        return "No matrix of the zoo could be fitted."
    counts = {verdict: int(audit[column].sum()) for verdict, column in VERDICT_COUNTS.items()}
    reliable = int(audit["num_reliable"].sum())
    none = audit.loc[(audit["num_matrices"] > 0) & (audit["num_reliable"] == 0), "model"].tolist()
    text = (f"Over the zoo, {reliable} of its {total} fitted matrices have a reliable verdict ("
            + ", ".join(f"{verdict} {counts[verdict]}" for verdict in RELIABLE_VERDICTS)
            + f"); {counts['uncertain']} are uncertain and {counts['no power law']} have no power-law tail.")
    if none:
        text += f" Models with no reliable matrix: {_list(none)}."
    return text


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|")


def to_markdown(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            lines += [f"# {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in rows] + [""]
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    # `name` -> <code>name</code>, the only inline markup the blocks use
    parts = html.escape(str(text), quote=False).split("`")
    return "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))


def to_html(blocks: list[tuple], *, title: str) -> str:
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{_inline_html(block[1])}</{kind}>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_inline_html(cell)}</th>" for cell in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(cell)}</td>" for cell in row) + "</tr>"
                           for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    style = ("body{font-family:sans-serif;max-width:60em;margin:1em auto;line-height:1.4}"
             "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 6px}"
             "code{background:#f2f2f2}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
