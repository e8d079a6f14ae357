"""The audit card's words on a fine-tune's or adapter's update against its base (the ``delta_``
columns of its layers.tsv, docs/finetunes.md): how large it is, which layers changed most, and
whether it looks like noise or like learned structure.

Size, in words, of the mean relative update ||dW||_F / ||W_base||_F over the model's matrices
(delta_relative_norm, unchanged layers' 0 included): below 1 % tiny, below 10 % small, below 50 %
moderate, else large (SIZE_WORDS). Noise or structure: per changed matrix the update's largest
eigenvalue against the Marchenko-Pastur bulk edge of a random matrix of the same shape and norm
(zooscope.analysis.delta.noise_edge_ratio); a matrix whose ratio is at most NOISE_EDGE_RATIO looks
like noise (its ESD is a random matrix's: no direction stands out), one above it has learned
structure (spikes above the random bulk, e.g. any low-rank update).
"""
from __future__ import annotations

import pandas as pd

from zooscope.analysis.delta import noise_edge_ratio

# (upper bound of the mean relative update, word), in order; above the last bound: "large".
SIZE_WORDS = ((0.01, "tiny"), (0.10, "small"), (0.50, "moderate"))
# A random N x M matrix's largest eigenvalue exceeds the MP edge by O((N M)^(-1/3)) relative
# (Tracy-Widom): a few percent for the smallest layers fitted (50 eigenvalues); 1.5 leaves room.
NOISE_EDGE_RATIO = 1.5
TOP_LAYERS = 3


def size_word(relative: float) -> str:
    return next((word for bound, word in SIZE_WORDS if relative < bound), "large")


def update_table(layers: pd.DataFrame) -> pd.DataFrame:
    """The changed matrices of a model with a base (delta_status ok or skipped) with their noise
    edge ratio (column ``edge_ratio``), largest relative update first."""
    changed = layers[layers["delta_status"].isin(["ok", "skipped"])].copy()
    changed["edge_ratio"] = [noise_edge_ratio(float(row.delta_lambda_max), float(row.delta_log_norm), int(row.N), int(row.M))
                             for row in changed.itertuples(index=False)]
    return changed.sort_values(["delta_relative_norm", "layer"], ascending=[False, True], kind="stable")


def _name(row) -> str:
    return f"`{row.layer}`" + (f" (slice {row.slice})" if row.slice else "")


def update_blocks(layers: pd.DataFrame, base: str) -> list[tuple]:
    """The card's section "Its update against its base" (module docstring), from the model's layers.tsv."""
    with_update = layers[layers["delta_status"].isin(["ok", "skipped", "unchanged"])]
    relative = pd.to_numeric(with_update["delta_relative_norm"], errors="coerce").dropna()
    blocks: list[tuple] = [("h2", f"Its update against its base `{base}`")]
    if relative.empty:
        return blocks + [("p", "No layer has a partner in the base: no update to describe.")]
    changed = update_table(layers)
    mean = float(relative.mean())
    size = (f"The update is {size_word(mean)}: on average the layers moved {mean:.1%} of their norm "
            f"(||dW||_F / ||W_base||_F, delta_relative_norm), {len(changed)} of {len(with_update)} matrices changed")
    if changed.empty:
        return blocks + [("p", size + ".")]
    blocks.append(("p", size + "; the most: " + ", ".join(
        f"{_name(row)} by {row.delta_relative_norm:.1%}" for row in changed.head(TOP_LAYERS).itertuples(index=False)) + "."))
    finite = changed[changed["edge_ratio"].notna()]
    noise = finite[finite["edge_ratio"] <= NOISE_EDGE_RATIO]
    if finite.empty:
        return blocks
    if len(noise) == len(finite):
        verdict = "looks like noise: in every changed matrix its largest eigenvalue stays within"
    elif noise.empty:
        verdict = "looks like learned structure: in every changed matrix its largest eigenvalue lies beyond"
    else:
        verdict = (f"is partly noise: {len(noise)} of {len(finite)} changed matrices ({', '.join(map(_name, noise.head(TOP_LAYERS).itertuples(index=False)))}"
                   f"{', ...' if len(noise) > TOP_LAYERS else ''}) stay within, the others lie beyond")
    strongest = finite.sort_values("edge_ratio", ascending=False, kind="stable").iloc[0]
    blocks.append(("p", f"The update {verdict} {NOISE_EDGE_RATIO:g} times the bulk edge of a random matrix of the "
                        f"same shape and norm (Marchenko-Pastur); the strongest, {_name(strongest)}, "
                        f"at {strongest.edge_ratio:.1f} times. An update that is noise has a random matrix's ESD; "
                        "one with directions of its own (learned, low-rank structure) has eigenvalues above the bulk."))
    return blocks
