"""``zooscope compare A B``: the per-layer update table of a model against its base, without a workflow.

Both are fetched as the workflow's fetch stage would fetch a ``file:`` row (a safetensors or
PyTorch weights file, an index or a model folder; A may be a PEFT LoRA folder, merged onto B), into a
scratch folder, and paired and computed as the esd stage does for a model with a base
(zooscope.spectra.delta_esd); the rows are those of layers.tsv's ``delta_`` columns, one per matrix
of A's layers, followed by B's layers that A lacks.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from zooscope.analysis.delta import DELTA_COLUMNS, delta_cells, delta_columns_of
from zooscope.config import EsdConfig, EsdSettings, FitSettings

# The table's columns: the layer's identity, then the delta columns of layers.tsv.
COMPARE_COLUMNS = ("layer", "slice", "type", "N", "M", *DELTA_COLUMNS)


@dataclass(frozen=True)
class Comparison:
    """The table's rows (dicts with COMPARE_COLUMNS) and the two models' layer counts."""

    rows: list[dict]
    num_layers: int
    num_base_layers: int


def compare_weights(model_path: str | Path, base_path: str | Path, settings: EsdSettings = EsdSettings(),
                    fit: FitSettings = FitSettings(), *, top_k: int = EsdConfig.delta_top_k) -> Comparison:
    """The update of every layer of ``model_path`` against ``base_path`` (module docstring), with the
    workflow's settings: ``settings`` (config ``esd:``), ``fit`` (``fit:``), ``top_k`` (``esd.delta_top_k``)."""
    from zooscope import io
    from zooscope.analysis.metrics import spectrum_metrics
    from zooscope.sources.fetch import fetch_model
    from zooscope.spectra.delta_esd import compute_model_deltas
    from zooscope.spectra.esd import load_layer_eigenvalues

    with tempfile.TemporaryDirectory(prefix="zooscope-compare-") as scratch:
        scratch = Path(scratch)
        rows = {"base": f"file:{Path(base_path).resolve()}", "model": f"file:{Path(model_path).resolve()}"}
        for name in ("base", "model"):  # the base first: an adapter is merged onto it
            fetch_model({"model": name, "series": "compare", "source": rows[name], "accuracy": None,
                         "base": "base" if name == "model" else None},
                        scratch / name, sheet_dir=Path.cwd(), base_dir=scratch / "base")
        meta = io.read_json(scratch / "model" / "meta.json")
        section = compute_model_deltas(
            scratch / "model" / "model.safetensors", scratch / "model" / "layers.json",
            scratch / "base" / "model.safetensors", scratch / "base" / "layers.json", scratch / "esd",
            settings, top_k=top_k, adapter=meta.get("adapter"))
        num_base = len(io.read_json(scratch / "base" / "layers.json")["layers"])
        cells = delta_cells(section, partial(load_layer_eigenvalues, scratch / "esd"),
                            partial(spectrum_metrics, fit=fit.without_uncertainty()))
    table = []
    for record in section["layers"]:
        labels = record["slices"] or [""]
        for label in labels:
            table.append({"layer": record["name"], "slice": label, "type": record["type"], "N": record["N"],
                          "M": record["M"], **delta_columns_of(cells, record["name"], label)})
    for layer in section["base_only"]:
        table.append({**dict.fromkeys(COMPARE_COLUMNS), "layer": layer["name"], "slice": "",
                      "delta_status": "unmatched", "delta_reason": layer["reason"]})
    return Comparison(table, len(section["layers"]), num_base)
