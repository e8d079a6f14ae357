import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def write_model_dir(directory: Path, layers: list[tuple[str, str, np.ndarray]], model: str = "m") -> Path:
    """Write model.safetensors + layers.json as the fetch stage does, from (name, type, weight)."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors, entries = {}, []
    for depth, (name, layer_type, weight) in enumerate(layers):
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        tensors[f"{name}.weight"] = weight
        entries.append({
            "name": name, "tensor": f"{name}.weight", "type": layer_type, "shape": list(weight.shape),
            "depth": depth, "sha256": hashlib.sha256(weight.tobytes()).hexdigest(),
        })
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "layers.json").write_text(json.dumps({"model": model, "layers": entries}))
    return directory


def checked_meta(out: Path) -> dict:
    """meta.json of a fetched model, its ``weights_digest`` checked against one computed here
    independently: the file's header bytes, then each tensor's sha256 as safetensors' own reader
    returns it (torch, any dtype), in the order of the tensors' bytes in the file."""
    import torch
    from safetensors import safe_open

    meta = json.loads((out / "meta.json").read_text())
    path = out / "model.safetensors"
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    order = sorted((entry["data_offsets"][0], name) for name, entry in header.items() if name != "__metadata__")
    digest = hashlib.sha256(raw[:8 + length])
    with safe_open(str(path), framework="pt") as stored:
        for _, name in order:
            tensor = stored.get_tensor(name).contiguous().reshape(-1)
            digest.update(hashlib.sha256(tensor.view(torch.uint8).numpy().tobytes()).digest())
    assert meta["weights_digest"] == digest.hexdigest()
    return meta


def read_outputs(out: Path) -> tuple[dict, dict]:
    """(layers.json, meta.json with its weights_digest checked: checked_meta) of a fetched model."""
    return json.loads((out / "layers.json").read_text()), checked_meta(out)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def fetch_file_source(path: Path, out: Path, model: str = "m"):
    """Fetch ``file:{path}`` as a zoo row into ``out``; (layers.json's layers, the stored float32
    matrices by layer name, meta.json)."""
    from safetensors.numpy import load_file

    from zooscope.sources.fetch import fetch_model

    fetch_model({"model": model, "series": "s", "source": f"file:{path}", "accuracy": None}, out,
                sheet_dir=path.parent)
    layers = json.loads((out / "layers.json").read_text())["layers"]
    stored = load_file(str(out / "model.safetensors"))
    return layers, {layer["name"]: stored[layer["tensor"]] for layer in layers}, checked_meta(out)
