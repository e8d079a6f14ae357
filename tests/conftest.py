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
    return layers, {layer["name"]: stored[layer["tensor"]] for layer in layers}, json.loads((out / "meta.json").read_text())
