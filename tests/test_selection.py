"""Layer selection (issue 14, item 5) and the coverage inventory (item 6): what is left out, and
why, is recorded for every tensor; nothing is dropped silently."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from zooscope.layers import MODULE_TYPES, layers_from_module
from zooscope.sources import coverage
from zooscope.sources.base import FetchError
from zooscope.sources.fetch import fetch_model
from zooscope.sources.selection import Selection, parse_selection
from zooscope.zoo import RowError, parse_row


def state() -> dict:
    torch.manual_seed(0)
    return {
        "embed.weight": torch.randn(300, 16),        # Embedding: N = 300, M = 16
        "blocks.0.attn.weight": torch.randn(16, 16),
        "blocks.0.mlp.weight": torch.randn(64, 16),  # M = 16, N = 64
        "blocks.0.mlp.bias": torch.randn(64),
        "blocks.1.attn.weight": torch.randn(16, 16),
        "blocks.1.mlp.weight": torch.randn(64, 16),
        "conv.weight": torch.randn(8, 4, 3, 3),      # Conv2d: 9 matrices of 8 x 4
        "head.weight": torch.randn(10, 16),
    }


def fetch(tmp_path, select=None, **cells):
    save_file(state(), tmp_path / "w.safetensors")
    row = {"model": "m", "series": "s", "source": "file:w.safetensors", "accuracy": None, **cells}
    fetch_model(row, tmp_path / "out", sheet_dir=tmp_path, select=select)
    layers = [layer["name"] for layer in json.loads((tmp_path / "out" / "layers.json").read_text())["layers"]]
    tensors = {t["tensor"]: t for t in json.loads((tmp_path / "out" / "tensors.json").read_text())["tensors"]}
    return layers, tensors, json.loads((tmp_path / "out" / "meta.json").read_text())


ALL = ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp", "conv", "embed", "head"]


@pytest.mark.parametrize("cells, kept, reasons", [
    ({}, ALL, {}),
    ({"include": "blocks.*"}, ALL[:4], dict.fromkeys(["conv.weight", "embed.weight", "head.weight"], "filtered")),
    ({"exclude": "*.attn, head"}, ["blocks.0.mlp", "blocks.1.mlp", "conv", "embed"],
     dict.fromkeys(["blocks.0.attn.weight", "blocks.1.attn.weight", "head.weight"], "filtered")),
    ({"include_types": "Conv2d,Embedding"}, ["conv", "embed"],
     dict.fromkeys([f"{n}.weight" for n in ALL if n not in ("conv", "embed")], "filtered")),
    ({"exclude_types": "Linear"}, ["conv", "embed"],
     dict.fromkeys([f"{n}.weight" for n in ALL if n not in ("conv", "embed")], "filtered")),
    ({"max_evals": "8"}, ["conv"], dict.fromkeys([f"{n}.weight" for n in ALL if n != "conv"], "over a cap")),
    ({"max_dim": "64"}, [n for n in ALL if n != "embed"], {"embed.weight": "over a cap"}),
], ids=["none", "include", "exclude", "include_types", "exclude_types", "max_evals", "max_dim"])
def test_selection_columns(tmp_path, cells, kept, reasons):
    layers, tensors, meta = fetch(tmp_path, **cells)
    assert layers == kept
    left_out = {key: t["reason"] for key, t in tensors.items() if t["reason"] and t["reason"] != "bias"}
    assert left_out == reasons
    assert tensors["blocks.0.mlp.bias"]["reason"] == "bias"
    assert set(load_file(tmp_path / "out" / "model.safetensors")) == {f"{name}.weight" for name in kept}
    assert ("selection" in meta) == bool(cells)


def test_details_say_which_rule(tmp_path):
    _, tensors, _ = fetch(tmp_path, exclude="head", max_dim="100")
    assert tensors["head.weight"]["detail"] == "matches exclude pattern head"
    assert tensors["embed.weight"]["detail"] == "largest dimension 300 > max_dim=100"


def test_config_select_is_the_default_and_a_cell_replaces_a_key(tmp_path):
    layers, _, meta = fetch(tmp_path, select={"exclude": ["head"], "max_dim": 100})
    assert layers == [n for n in ALL if n not in ("head", "embed")]
    assert meta["selection"] == {"exclude": ["head"], "max_dim": 100}
    layers, _, meta = fetch(tmp_path, select={"exclude": ["head"], "max_dim": 100}, exclude="conv")
    assert layers == [n for n in ALL if n not in ("conv", "embed")]
    assert meta["selection"] == {"exclude": ["conv"], "max_dim": 100}


def test_selecting_nothing_fails_with_the_coverage_summary(tmp_path):
    with pytest.raises(FetchError) as error:
        fetch(tmp_path, include="nothing.matches")
    message = str(error.value)
    assert "model 'm': no analysable weight" in message
    assert "8 tensors: 0 analysed; left out: 1 bias, 7 filtered" in message and "loosen the layer selection" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cells, words", [
    ({"include_types": "Dense"}, "unknown layer type(s) Dense"),
    ({"max_evals": "0"}, "max_evals must be a positive integer"),
    ({"max_dim": "ten"}, "max_dim must be a positive integer"),
])
def test_bad_selection_cells_are_row_errors(cells, words):
    with pytest.raises(RowError, match=r"model 'm': .*" + words.replace("(", r"\(").replace(")", r"\)")):
        parse_row({"model": "m", "series": "s", "source": "train:mlp", "accuracy": None, **cells})


def test_the_schemas_list_the_layer_types():
    from conftest import REPO
    from zooscope.config import load_schema

    config = load_schema(REPO / "schemas" / "config.schema.yaml")["properties"]["select"]["properties"]
    assert config["include_types"]["items"]["enum"] == list(MODULE_TYPES)
    zoo = load_schema(REPO / "schemas" / "zoo.schema.yaml")["properties"]["include_types"]["pattern"]
    assert all(kind in zoo for kind in MODULE_TYPES)


def test_selection_round_trips_through_the_rows_plain_form():
    row = parse_row({"model": "m", "series": "s", "source": "random:mlp", "accuracy": None,
                     "include": "0,2", "max_evals": "32"})
    assert row.selection == Selection(include=("0", "2"), max_evals=32)
    assert type(row).from_dict(row.fetch_form()).selection == row.selection
    assert parse_selection({}) == Selection()


class Attention(nn.Module):
    """A MultiheadAttention (one fused in_proj_weight: three layers), a tied head, a norm, a buffer."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.norm = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight


def test_module_inventory_names_the_tensor_each_layer_came_from():
    network = Attention()
    layers = layers_from_module(network)
    records = {r["tensor"]: r for r in coverage.module_inventory(network, layers)}
    assert records.keys() == network.state_dict().keys()
    assert records["attn.in_proj_weight"]["layer"] == "attn.q_proj,attn.k_proj,attn.v_proj"
    assert records["head.weight"]["reason"] == "tied" and records["head.weight"]["detail"] == "tied to embed.weight"
    assert {key: r["reason"] for key, r in records.items() if key.startswith("norm.")} == {
        "norm.weight": "norm", "norm.bias": "bias", "norm.running_mean": "norm", "norm.running_var": "norm",
        "norm.num_batches_tracked": "integer buffer"}
    assert records["attn.in_proj_bias"]["reason"] == "bias"


def test_coverage_rows_add_the_fit_verdicts():
    records = [
        {"tensor": "a.weight", "shape": [70, 60], "dtype": "F32", "layer": "a", "reason": "", "detail": ""},
        {"tensor": "b.weight", "shape": [9, 8, 3, 3], "dtype": "BF16", "layer": "b", "reason": "", "detail": ""},
        {"tensor": "c.weight", "shape": [70, 60], "dtype": "F32", "layer": "c", "reason": "", "detail": ""},
        {"tensor": "a.bias", "shape": [70], "dtype": "F32", "layer": "", "reason": "bias", "detail": ""},
    ]
    rows = [{"layer": "a", "status": "ok", "reason": ""}] + [
        {"layer": "b", "status": "skipped", "reason": "8 eigenvalues < min_evals=50"}] * 9 + [
        {"layer": "c", "status": "failed", "reason": "ValueError: weights contain NaN or Inf (1 of 4200 entries)"}]
    table = coverage.coverage_rows(records, rows)
    assert [(r["tensor"], r["shape"], r["analysed"], r["reason"]) for r in table] == [
        ("a.weight", "70x60", True, ""), ("b.weight", "9x8x3x3", False, "below min_evals"),
        ("c.weight", "70x60", False, "failed"), ("a.bias", "70", False, "bias")]
    assert table[1]["detail"] == "8 eigenvalues < min_evals=50"
    assert coverage.coverage_counts(table) == {
        "num_tensors": 4, "num_tensors_analysed": 1, "tensors_left_out": "bias: 1; below min_evals: 1; failed: 1"}
