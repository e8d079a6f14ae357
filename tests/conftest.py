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
