"""The esd stage's updates: for a model with a base, the spectrum of dW = W - W_base of every layer.

Layers are paired by name (layers.json ``name``, the one identity of a layer): a pair of the same
type and shape gets an entry, cached like an ESD entry (``delta/{layer}.npy`` and
``delta/{layer}.entry.json`` inside the model's esd folder, the record written last) under a key of
both weights hashes, the spectrum settings and ``top_k``; a rerun after the base or the model changed
recomputes only the pairs whose key changed. A layer of the model without a partner is recorded as
``unmatched`` with the reason; layers of the base only are listed in the section's ``base_only``.
Identical weights (equal hashes) are ``unchanged`` without any computation: the frozen layers of a
fine-tune cost nothing.

An adapter model (a ``peft:`` source, zooscope.sources.peft) has the factors of each adapted layer in
its model.safetensors, named by its meta.json ``adapter`` section; those layers take the low-rank
route (zooscope.spectra.delta.lowrank_layer_delta), never forming dW.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from zooscope import io, resources
from zooscope.config import EsdSettings
from zooscope.spectra import delta as deltas
from zooscope.spectra.esd import PARALLEL_LAYERS_BELOW

log = logging.getLogger(__name__)

# Bump when the update computation changes, to invalidate every delta entry.
DELTA_VERSION = 1
DELTA_DIR = "delta"
ENTRY_SUFFIX = ".entry.json"


class BaseMismatchError(ValueError):
    """A model and its base that share no layer: the base is of another architecture."""


def delta_key(layer: dict, base_layer: dict, settings: dict, top_k: int, factors: dict | None) -> str:
    fields = {"version": DELTA_VERSION, "sha256": layer["sha256"], "base_sha256": base_layer["sha256"],
              "type": layer["type"], "shape": list(layer["shape"]), "top_k": top_k,
              "factors": factors, **settings}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def pair_layers(layers: list[dict], base_layers: list[dict]) -> tuple[list[tuple[dict, dict | None, str]], list[dict]]:
    """([(layer, its base layer or None, why not paired)] in the model's order, [the base's layers the
    model lacks, each {"name", "reason"}])."""
    by_name = {layer["name"]: layer for layer in base_layers}
    pairs = []
    for layer in layers:
        base = by_name.get(layer["name"])
        if base is None:
            pairs.append((layer, None, "not in the base"))
        elif base["type"] != layer["type"]:
            pairs.append((layer, None, f"type {layer['type']} differs from the base's {base['type']}"))
        elif list(base["shape"]) != list(layer["shape"]):
            pairs.append((layer, None, f"shape {tuple(layer['shape'])} differs from the base's {tuple(base['shape'])}"))
        else:
            pairs.append((layer, base, ""))
    names = {layer["name"] for layer in layers}
    base_only = [{"name": layer["name"], "reason": "not in the model"} for layer in base_layers
                 if layer["name"] not in names]
    return pairs, base_only


def compute_model_deltas(weights_path, layers_path, base_weights_path, base_layers_path, esd_dir,
                         settings: EsdSettings = EsdSettings(), *, top_k: int = deltas.DEFAULT_TOP_K,
                         adapter: dict | None = None, device: str | None = None, threads: int = 1) -> dict:
    """Compute (or reuse) the update entries of every layer; return the index's ``delta`` section.

    ``settings``: the model's esd settings (config ``esd:``), of which an update depends on
    :meth:`EsdSettings.matrices` alone. ``adapter``: an adapter model's meta.json ``adapter``
    section (its factors' tensor names and scales per adapted layer's tensor). ``device``: a torch device for the eigenvalues of dense
    updates, as in compute_model_esd (not part of the key); ``threads``: the job's threads.
    """
    settings = settings.matrices()
    layers_doc, base_doc = io.read_json(layers_path), io.read_json(base_layers_path)
    model, base_model = layers_doc.get("model"), base_doc.get("model")
    pairs, base_only = pair_layers(layers_doc["layers"], base_doc["layers"])
    if not any(base is not None for _, base, _ in pairs):
        raise BaseMismatchError(
            f"model {model!r} and its base {base_model!r} have no layer in common (same name, type and shape): "
            f"the base is of another architecture; set the zoo column 'base' of {model!r} to a model it was "
            "fine-tuned from, or leave it empty")
    out_dir = Path(esd_dir) / DELTA_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    reader, base_reader = io.SafetensorsReader(weights_path), io.SafetensorsReader(base_weights_path)
    factors_of = (adapter or {}).get("layers", {})
    records: list[dict] = []
    todo = []  # (position, layer, base, factors): the entries to compute
    for layer, base, why in pairs:
        record = {"name": layer["name"], "type": layer["type"], "depth": layer["depth"], "status": "unmatched",
                  "reason": why, "file": None, "slices": [], "N": None, "M": None, "route": None,
                  "relative_norm": [], "overlap": [], "overlap_max": []}
        if base is not None and base["sha256"] == layer["sha256"]:
            record.update(status="unchanged", reason="identical to the base's weights")
        elif base is not None:
            factors = factors_of.get(layer["tensor"])
            record["key"] = delta_key(layer, base, settings, top_k, factors)
            entry_path = out_dir / f"{layer['name']}{ENTRY_SUFFIX}"
            cached = io.read_json(entry_path) if entry_path.is_file() else None
            if cached and cached.get("key") == record["key"] and (
                    cached["file"] is None or (Path(esd_dir) / cached["file"]).is_file()):
                record = cached
            else:
                todo.append((len(records), layer, base, factors))
        records.append(record)

    def compute(item) -> None:
        position, layer, base, factors = item
        records[position].update(_compute(reader, base_reader, layer, base, factors, Path(esd_dir), settings,
                                          top_k, device))
        io.write_json(out_dir / f"{layer['name']}{ENTRY_SUFFIX}", records[position])

    # As the layers' own spectra (zooscope.spectra.esd.compute_model_esd), small matrices a layer
    # per thread with one BLAS thread each; large ones one after another with all the job's BLAS
    # threads (not in batches: an update's spectrum is not split into products and solve). Which
    # way a layer goes depends on its shape only.
    small = [item for item in todo
             if device is None and resources.layer_matrices(item[1]["shape"])[2] < PARALLEL_LAYERS_BELOW]
    in_pool = {item[0] for item in small}
    for item in todo:
        if item[0] not in in_pool:
            compute(item)
    if small:
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1), ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(compute, small))  # list(): raises a worker's exception here
    reused = sum(record.get("key") is not None for record in records) - len(todo)
    _remove_stale(out_dir, {record["name"] for record in records if record.get("key")})
    log.info("%s against base %s: %d layers, %d updates reused from the cache, %d unchanged, %d unmatched, "
             "%d base layers not in the model", model, base_model, len(records), reused,
             sum(r["status"] == "unchanged" for r in records), sum(r["status"] == "unmatched" for r in records),
             len(base_only))
    return {"base": base_model, "top_k": top_k, "layers": records, "base_only": base_only}


def remove_deltas(esd_dir) -> None:
    """Remove a model's update entries (it no longer has a base)."""
    import shutil

    shutil.rmtree(Path(esd_dir) / DELTA_DIR, ignore_errors=True)


def _compute(reader, base_reader, layer: dict, base: dict, factors: dict | None, esd_dir: Path,
             settings: dict, top_k: int, device: str | None) -> dict:
    """The fields of one computed entry (its eigenvalues written to delta/{layer}.npy)."""
    npy = f"{DELTA_DIR}/{layer['name']}.npy"
    try:
        base_weight = base_reader.get_tensor(base["tensor"])
        if factors is not None:
            result = deltas.lowrank_layer_delta(reader.get_tensor(factors["left"]), reader.get_tensor(factors["right"]),
                                                factors["scale"], base_weight, layer["type"],
                                                normalize=settings["normalize"], top_k=top_k)
        else:
            result = deltas.layer_delta(reader.get_tensor(layer["tensor"]), base_weight, layer["type"], **settings,
                                        top_k=top_k, device=device)
    except Exception as error:  # a bad layer becomes a failed row, never a failed model
        (esd_dir / npy).unlink(missing_ok=True)
        return {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
    io.write_npy(esd_dir / npy, result.eigenvalue_rows())
    matrices = result.matrices
    return {"status": "ok", "file": npy, "slices": result.slices, "N": int(result.shape[0]),
            "M": int(result.shape[1]), "route": "low-rank" if factors is not None else "dense",
            "relative_norm": [m.relative_norm for m in matrices], "overlap": [m.overlap for m in matrices],
            "overlap_max": [m.overlap_max for m in matrices]}


def _remove_stale(out_dir: Path, names: set[str]) -> None:
    for path in out_dir.iterdir():
        for suffix in (ENTRY_SUFFIX, ".npy"):
            if path.name.endswith(suffix):
                if path.name[: -len(suffix)] not in names:
                    path.unlink()
                break
