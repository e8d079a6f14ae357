"""zooscope.rebuild (a fetched train:/random: model as a module) and the jac_ join of aggregate."""
import math

import pandas as pd
import pytest
import torch

from zooscope import io
from zooscope.aggregate import join_jacobian
from zooscope.rebuild import RebuildError, rebuild_module
from zooscope.sources import fetch_model


def fetched(tmp_path, source, **options):
    row = {"model": "m", "series": "s", "source": source, "accuracy": None, **options}
    fetch_model(row, tmp_path, sheet_dir=tmp_path)
    return io.read_json(tmp_path / "meta.json"), io.read_json(tmp_path / "layers.json")["layers"]


@pytest.mark.parametrize("source, options", [
    ("random:mlp", {"width": "32", "depth": "1", "seed": "3"}),
    ("train:mlp", {"width": "32", "depth": "1", "epochs": "2"}),
])
def test_rebuilt_model_is_the_fetched_one(tmp_path, source, options):
    meta, layers = fetched(tmp_path, source, **options)
    network = rebuild_module(meta, layers)
    assert not network.training
    # the weights fetch wrote, bit for bit (biases are not in model.safetensors: that is why it is rebuilt)
    from safetensors.torch import load_file

    stored = load_file(tmp_path / "model.safetensors")
    state = network.state_dict()
    assert stored.keys() == {"net.0.weight", "net.2.weight"}
    for key, value in stored.items():
        assert torch.equal(state[key], value)


def test_a_different_model_is_refused(tmp_path):
    meta, layers = fetched(tmp_path, "random:mlp", width="32", depth="1", seed="3")
    with pytest.raises(RebuildError, match="differ"):
        rebuild_module({**meta, "options": {**meta["options"], "seed": 4}}, layers)
    with pytest.raises(RebuildError, match="file: model cannot be run"):
        rebuild_module({**meta, "source": "file:w.safetensors"}, layers)


def test_join_jacobian_adds_jac_columns_only_when_there_are_summaries():
    models = pd.DataFrame({"model": ["a", "b", "c"], "accuracy": [1.0, 2.0, 3.0]})
    same, columns = join_jacobian(models, [])
    assert same is models and columns == []
    joined, columns = join_jacobian(models, [{"model": "b", "metrics": {"jac_alpha": 2.5, "jac_rank": 7}}])
    assert columns == ["jac_alpha", "jac_rank"]
    assert joined.loc[1, "jac_alpha"] == 2.5 and joined.loc[1, "jac_rank"] == 7
    assert math.isnan(joined.loc[0, "jac_alpha"]) and math.isnan(joined.loc[2, "jac_rank"])
    with pytest.raises(ValueError, match="not in the table"):
        join_jacobian(models, [{"model": "z", "metrics": {}}])
