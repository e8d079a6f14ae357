"""The esd stage: the eigenvalues of every layer of one model, cached per layer.

Snakemake runs one job per model (design.md: per-layer jobs would make no-op reruns of big zoos
slow), and inside it each layer is a cache entry: ``{layer}.npy`` (the eigenvalues, one sorted row
per matrix) and ``{layer}.entry.json`` (its record, written last as the entry's commit marker). An entry
is reused when its key (the layer's weights hash and the spectrum settings) is unchanged, so a
rerun after a model changes recomputes only the layers whose weights changed. The entries are not
declared as Snakemake outputs on purpose: Snakemake deletes a job's outputs before running it.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from zooscope import io, spectrum

log = logging.getLogger(__name__)

# Bump when the eigenvalue computation changes, to invalidate every cache entry.
ESD_VERSION = 1
ENTRY_SUFFIX = ".entry.json"


def cache_key(layer: dict, *, conv2d: str, normalize: str) -> str:
    fields = {
        "version": ESD_VERSION,
        "sha256": layer["sha256"],
        "type": layer["type"],
        "shape": list(layer["shape"]),
        "conv2d": conv2d,
        "normalize": normalize,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def layer_eigenvalues(weight: np.ndarray, layer_type: str, *, conv2d: str, normalize: str):
    """(slice labels, eigenvalues array of shape (num_matrices, M), (N, M))."""
    matrices = spectrum.layer_matrices(weight, layer_type, conv2d=conv2d)
    rows = [spectrum.eigenvalues(m.matrix, normalize=normalize) for m in matrices]
    return [m.label for m in matrices], np.vstack(rows), spectrum.oriented_shape(matrices[0].matrix)


def _compute_entry(reader, layer: dict, key: str, out_dir: Path, *, conv2d: str, normalize: str) -> dict:
    record = {
        "name": layer["name"],
        "tensor": layer["tensor"],
        "type": layer["type"],
        "shape": list(layer["shape"]),
        "depth": layer["depth"],
        "key": key,
        "file": None,
        "slices": [],
        "N": None,
        "M": None,
        "status": "ok",
        "reason": "",
    }
    npy_path = out_dir / f"{layer['name']}.npy"
    try:
        weight = reader.get_tensor(layer["tensor"])
        labels, values, (n, m) = layer_eigenvalues(weight, layer["type"], conv2d=conv2d, normalize=normalize)
    except Exception as error:  # a bad layer becomes a failed row, never a failed model
        record.update(status="failed", reason=f"{type(error).__name__}: {error}")
        npy_path.unlink(missing_ok=True)
        return record
    io.write_npy(npy_path, values)
    record.update(file=npy_path.name, slices=labels, N=int(n), M=int(m))
    return record


def compute_model_esd(weights_path, layers_path, out_dir, *, conv2d: str = "slices", normalize: str = "none") -> dict:
    """Compute (or reuse) every layer's eigenvalues; return the index that the fit stage reads."""
    from safetensors import safe_open

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers_doc = io.read_json(layers_path)
    layers = layers_doc["layers"]
    records = []
    reused = 0
    with safe_open(str(weights_path), framework="numpy") as reader:
        for position, layer in enumerate(layers, start=1):
            key = cache_key(layer, conv2d=conv2d, normalize=normalize)
            entry_path = out_dir / f"{layer['name']}{ENTRY_SUFFIX}"
            cached = io.read_json(entry_path) if entry_path.is_file() else None
            if cached and cached.get("key") == key and (cached["file"] is None or (out_dir / cached["file"]).is_file()):
                record = cached
                reused += 1
                action = "cached"
            else:
                record = _compute_entry(reader, layer, key, out_dir, conv2d=conv2d, normalize=normalize)
                io.write_json(entry_path, record)
                action = "computed"
            log.info("[%d/%d] %s %s (%s)%s", position, len(layers), action, layer["name"], layer["type"],
                     f": {record['reason']}" if record["status"] != "ok" else "")
            records.append(record)
    _remove_stale_entries(out_dir, {layer["name"] for layer in layers})
    log.info("%s: %d layers, %d reused from the cache", layers_doc.get("model", ""), len(records), reused)
    return {
        "model": layers_doc.get("model"),
        "settings": {"conv2d": conv2d, "normalize": normalize},
        "layers": records,
    }


def _remove_stale_entries(out_dir: Path, names: set[str]) -> None:
    for path in out_dir.iterdir():
        for suffix in (ENTRY_SUFFIX, ".npy"):
            if path.name.endswith(suffix) and path.name[: -len(suffix)] not in names:
                path.unlink()


def load_layer_eigenvalues(esd_dir, record: dict) -> np.ndarray:
    """The (num_matrices, M) eigenvalue array of one index record."""
    return np.load(Path(esd_dir) / record["file"], allow_pickle=False)
