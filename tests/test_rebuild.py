"""zooscope.jacobian.rebuild (a fetched train:/random: model as a module) and the jac_ join of aggregate."""
import dataclasses
import math

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from zooscope import io

from zooscope.models import architectures

from zooscope.models import catalog, digits
from zooscope.analysis.aggregate import join_jacobian
from zooscope.jacobian.rebuild import RebuildError, rebuild_module
from zooscope.sources.fetch import fetch_model


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
    network = rebuild_module(meta, layers, tmp_path / "model.safetensors")
    assert not network.training
    # the fetched module's whole state, bit for bit: the analysed weights and the biases
    reference = rebuilt_by_hand(source, options)
    state = network.state_dict()
    assert state.keys() == reference.keys() == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    for key, value in reference.items():
        assert torch.equal(state[key], value), key
    # and it computes what the fetched model computes
    x = torch.randn(5, 64)
    reference_network = architectures.build_architecture("mlp", {"width": 32, "depth": 1})
    reference_network.load_state_dict(reference)
    assert torch.equal(network(x), reference_network.eval()(x))


def rebuilt_by_hand(source, options):
    """The model fetch builds, made here with the seeded recipe directly (no zooscope.jacobian.rebuild)."""
    kind, _ = source.split(":")
    options = dict(options)
    seed = int(options.get("seed", 0)) if kind == "random" else catalog.TRAINING_DEFAULTS["mlp"].seed
    with digits.deterministic_torch(seed, 1):
        network = architectures.build_architecture("mlp", {"width": 32, "depth": 1})
    if kind == "train":
        config = dataclasses.replace(catalog.TRAINING_DEFAULTS["mlp"], epochs=int(options["epochs"]))
        digits.train(network, config, threads=1)
    return network.state_dict()


def test_a_different_or_incomplete_model_is_refused(tmp_path):
    meta, layers = fetched(tmp_path, "random:mlp", width="32", depth="1", seed="3")
    weights = tmp_path / "model.safetensors"
    other = [{**layer, "sha256": "0" * 64} if i == 0 else layer for i, layer in enumerate(layers)]
    with pytest.raises(RebuildError, match="differ"):
        rebuild_module(meta, other, weights)
    with pytest.raises(RebuildError, match="file: model cannot be run"):
        rebuild_module({**meta, "source": "file:w.safetensors"}, layers, weights)
    # a model.safetensors with only the analysed weights (as zooscope wrote before) is refused by name
    stored = load_file(weights)
    save_file({key: value for key, value in stored.items() if key.endswith("weight")}, tmp_path / "old.safetensors")
    with pytest.raises(RebuildError, match="net.0.bias.*refetch"):
        rebuild_module(meta, layers, tmp_path / "old.safetensors")


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
