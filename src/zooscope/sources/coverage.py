"""Coverage: every tensor of a model's checkpoint, and whether it was analysed or why not.

The fetch stage writes the inventory (``resources/models/{model}/tensors.json``: each tensor's
name, shape, dtype, the layer it became, or the reason it was left out); the fit stage adds what
only it knows (a layer below ``min_evals``, one whose ESD failed) and writes
``results/metrics/{model}/coverage.tsv`` (COVERAGE_COLUMNS, docs/intake.md "Coverage").
"""
from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from zooscope.io import FLOAT_DTYPES
from zooscope.layers import WEIGHT_NORM_SUFFIXES, LayerList, split_parts, tree_weights
from zooscope.tensors import FLOAT8_SCALE_SUFFIXES, MXFP4_SUFFIXES, RenamedTensors, TensorInfo, describe_tensor, tensor_info

if TYPE_CHECKING:
    from torch import nn

# Why a tensor is not analysed (the ``reason`` column); "" for an analysed one.
REASONS = (
    "bias", "norm", "1-D", "integer buffer", "tied", "not a layer weight", "unsupported rank",
    "filtered", "over a cap", "below min_evals", "failed", "training state", "quantisation scale",
)
# The magnitude g of a weight-norm parametrisation, under transformers 5's and older names.
WEIGHT_NORM_MAGNITUDES = tuple(magnitude for _, magnitude in WEIGHT_NORM_SUFFIXES)
COVERAGE_COLUMNS = ("tensor", "shape", "dtype", "analysed", "layer", "reason", "detail")
# The counts models.tsv gains (coverage_counts), kept in the fit stage's summary.json.
COVERAGE_COUNTS = ("num_tensors", "num_tensors_analysed", "tensors_left_out")
# Names of 1-D tensors that belong to a normalisation layer (BatchNorm's running statistics too).
NORM_NAME = re.compile(r"(norm|(^|[._])(ln|bn|gn)[_0-9]*([._]|$)|running_(mean|var)|layer_?scale)", re.IGNORECASE)


def left_out_reason(key: str, info: TensorInfo) -> tuple[str, str]:
    """(reason, detail) of a tensor that no layer was made of, from its name, dtype and rank."""
    rank = len(info.shape)
    for suffix in FLOAT8_SCALE_SUFFIXES:
        if key.endswith("weight" + suffix):
            return "quantisation scale", f"of {key.removesuffix(suffix)}"
    if key.endswith(WEIGHT_NORM_MAGNITUDES):
        return "norm", "weight-norm magnitude (applied to its direction, the analysed weight)"
    if key.endswith(MXFP4_SUFFIXES[1]) and info.dtype == "U8":
        return "quantisation scale", f"of {key.removesuffix(MXFP4_SUFFIXES[1])} (MXFP4)"
    if key.endswith("input_scale"):
        return "quantisation scale", "of an activation"
    if info.dtype not in FLOAT_DTYPES:
        return "integer buffer", f"{info.dtype} tensor"
    if key.endswith("bias"):
        return "bias", ""
    if rank <= 1:
        return ("norm", "") if NORM_NAME.search(key) or key.endswith(".weight") else ("1-D", f"rank {rank}")
    if rank > 4:
        return "unsupported rank", f"rank {rank}: no layer type has it"
    return "not a layer weight", f"rank {rank}, not the weight of a Linear, Conv1d, Conv2d or Embedding layer"


def inventory(tensors: Mapping[str, TensorInfo], layers: LayerList,
              parameter_of: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One record per checkpoint tensor (``tensors``: name -> TensorInfo, in checkpoint order).

    ``parameter_of`` maps a layer's tensor key to the checkpoint tensor it was made of where the
    two differ (a MultiheadAttention's q/k/v parts of ``in_proj_weight``, a module tree that
    names the checkpoint's tensors otherwise; a tensor split by name, stacked experts or fused q/k/v,
    zooscope.layers.split_parts); a tensor several layers came from lists them all.
    """
    parameter_of = {**split_parts(tensors), **(parameter_of or {})}
    made: dict[str, list[str]] = {}
    for layer in layers.layers:
        made.setdefault(parameter_of.get(layer.tensor, layer.tensor), []).append(layer.name)

    def checkpoint_key(key: str) -> str:
        return parameter_of.get(key, key)

    tied = {checkpoint_key(key): checkpoint_key(target) for key, target in layers.tied.items()}
    dropped = {checkpoint_key(key): value for key, value in layers.left_out.items()}
    records = []
    for key, info in tensors.items():
        if key in made:
            reason, detail = "", ""
        elif key in tied:
            reason, detail = "tied", f"tied to {tied[key]}"
        elif key in dropped:
            reason, detail = dropped[key]
        else:
            reason, detail = left_out_reason(key, info)
        records.append({"tensor": key, "shape": list(info.shape), "dtype": info.dtype,
                        "layer": ",".join(made.get(key, ())), "reason": reason, "detail": detail})
    return records


def module_inventory(network: nn.Module, layers: LayerList) -> list[dict[str, Any]]:
    """The inventory of a module's whole state (parameters and buffers, under their state-dict names)."""
    parameter_of = {item.key: item.parameter for item, _ in tree_weights(network)}
    state = network.state_dict(keep_vars=True)
    return inventory({key: describe_tensor(value) for key, value in state.items()}, layers, parameter_of)


def checkpoint_inventory(network: nn.Module, weights: RenamedTensors, layers: LayerList) -> list[dict[str, Any]]:
    """The inventory of a checkpoint read under a module tree's names (zooscope.sources.hf.checkpoint_names):
    the checkpoint's tensors under the checkpoint's names (a fused parameter's under its own)."""
    store = weights.store
    parameter_of = dict(weights.names)
    parameter_of.update({item.key: weights.names.get(item.parameter, item.parameter) for item, _ in tree_weights(network)})
    records = inventory({key: tensor_info(store, key) for key in store}, layers, parameter_of)
    for record in records:  # a tied weight the file keeps under another of its names too
        if record["tensor"] in weights.aliases and record["reason"]:
            record.update(reason="tied", detail=f"tied to {weights.aliases[record['tensor']]}")
    return records


def summary(records: Iterable[Mapping[str, Any]]) -> str:
    """"N tensors: K analysed; left out: 8 bias, 4 norm" (reasons in REASONS order)."""
    records = list(records)
    counts = Counter(record["reason"] for record in records if record["reason"])
    analysed = sum(not record["reason"] for record in records)
    left = ", ".join(f"{counts[reason]} {reason}" for reason in REASONS if counts[reason])
    return f"{len(records)} tensors: {analysed} analysed" + (f"; left out: {left}" if left else "")


def coverage_rows(records: Iterable[Mapping[str, Any]], layer_rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """The coverage table: the fetch inventory with the fit stage's verdicts. An analysed tensor
    whose every layer row was skipped (too few eigenvalues) is ``below min_evals``, one whose
    every row failed is ``failed``; the detail is the rows' reason."""
    statuses: dict[str, list[Mapping]] = {}
    for row in layer_rows:
        statuses.setdefault(row["layer"], []).append(row)
    table = []
    for record in records:
        reason, detail = record["reason"], record["detail"]
        if not reason:
            rows = [row for name in record["layer"].split(",") for row in statuses.get(name, ())]
            if rows and all(row["status"] == "skipped" for row in rows):
                reason, detail = "below min_evals", rows[0]["reason"]
            elif rows and all(row["status"] == "failed" for row in rows):
                reason, detail = "failed", rows[0]["reason"]
        table.append({"tensor": record["tensor"], "shape": "x".join(map(str, record["shape"])),
                      "dtype": record["dtype"], "analysed": not reason, "layer": record["layer"],
                      "reason": reason, "detail": detail})
    return table


def coverage_counts(table: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """models.tsv's coverage columns (COVERAGE_COUNTS): how many tensors, how many analysed, and
    the others by reason ("bias: 10; norm: 21", in REASONS order)."""
    table = list(table)
    counts = Counter(row["reason"] for row in table if row["reason"])
    values = (len(table), sum(bool(row["analysed"]) for row in table),
              "; ".join(f"{reason}: {counts[reason]}" for reason in REASONS if counts[reason]))
    return dict(zip(COVERAGE_COUNTS, values, strict=True))
