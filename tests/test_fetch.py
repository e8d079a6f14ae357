"""Tests of the fetch stage (zooscope.sources): every source kind, every weights-file format,
refusal of pickles that would run code, and the three output files."""
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import read_outputs
from zooscope.sources.base import FetchError
from zooscope.sources.fetch import fetch_model
from zooscope.sources.registry import KINDS
from zooscope.zoo import RowError, parse_options, parse_source

OUTPUTS = {"model.safetensors", "layers.json", "meta.json", "tensors.json"}


# --------------------------------------------------------------------------- a hand-made state dict


def reference_state() -> dict:
    """A state dict with every kind of entry the state-dict rule must sort out."""
    g = torch.Generator().manual_seed(0)
    return {
        "tok_embed.weight": torch.randn(12, 4, generator=g),
        "layers.2.fc.weight": torch.randn(6, 4, generator=g),
        "layers.2.fc.bias": torch.randn(6, generator=g),
        "layers.10.fc.weight": torch.randn(3, 6, generator=g),
        "conv1d.weight": torch.randn(5, 3, 2, generator=g),
        "conv2d.weight": torch.randn(4, 2, 3, 3, generator=g),
        "norm.weight": torch.ones(6),
        "norm.running_mean": torch.zeros(6),
        "head:out.weight": torch.randn(10, 3, generator=g),
        "index.weight": torch.zeros(2, 2, dtype=torch.int64),
        "steps": torch.tensor(7),
    }


# Written by hand from the rules (natural key order; 2-D Linear unless "embed"; rank 3/4 convs;
# biases, 1-D, integer and non-"weight" tensors skipped; unsafe characters replaced).
EXPECTED_LAYERS = [
    ("conv1d", "conv1d.weight", "Conv1d", [5, 3, 2]),
    ("conv2d", "conv2d.weight", "Conv2d", [4, 2, 3, 3]),
    ("head_out", "head:out.weight", "Linear", [10, 3]),
    ("layers.2.fc", "layers.2.fc.weight", "Linear", [6, 4]),
    ("layers.10.fc", "layers.10.fc.weight", "Linear", [3, 6]),
    ("tok_embed", "tok_embed.weight", "Embedding", [12, 4]),
]
# All float tensors: 48 + 24 + 6 + 18 + 30 + 72 + 6 + 6 + 30 (integer ones excluded).
EXPECTED_NUM_PARAMS = 240
# Why each tensor that no layer was made of is left out (docs/intake.md, "Coverage").
EXPECTED_LEFT_OUT = {
    "layers.2.fc.bias": "bias", "norm.weight": "norm", "norm.running_mean": "norm",
    "index.weight": "integer buffer", "steps": "integer buffer",
}


def split(state):
    keys = list(state)
    return {k: state[k] for k in keys[:5]}, {k: state[k] for k in keys[5:]}


def write_index(path: Path, shards: dict[str, dict]):
    weight_map = {key: name for name, part in shards.items() for key in part}
    path.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))


def fmt_safetensors(root: Path) -> str:
    save_file(reference_state(), root / "weights.safetensors")
    return "weights.safetensors"


def fmt_safetensors_shards_no_index(root: Path) -> str:
    first, second = split(reference_state())
    (root / "shards").mkdir()
    save_file(first, root / "shards" / "model-00001-of-00002.safetensors")
    save_file(second, root / "shards" / "model-00002-of-00002.safetensors")
    return "shards"


def fmt_safetensors_shards_index(root: Path) -> str:
    first, second = split(reference_state())
    shards = {"model-00001-of-00002.safetensors": first, "model-00002-of-00002.safetensors": second}
    (root / "hf").mkdir()
    for name, part in shards.items():
        save_file(part, root / "hf" / name)
    write_index(root / "hf" / "model.safetensors.index.json", shards)
    (root / "hf" / "config.json").write_text("{}")
    return "hf"


def fmt_hf_safetensors(root: Path) -> str:
    (root / "hf").mkdir()
    (root / "hf" / "config.json").write_text('{"architectures": ["Tiny"]}')
    save_file(reference_state(), root / "hf" / "model.safetensors")
    return "hf"


def fmt_hf_bin(root: Path) -> str:
    (root / "hf").mkdir()
    (root / "hf" / "config.json").write_text("{}")
    torch.save(reference_state(), root / "hf" / "pytorch_model.bin")
    return "hf"


def fmt_hf_bin_sharded(root: Path) -> str:
    first, second = split(reference_state())
    shards = {"pytorch_model-00001-of-00002.bin": first, "pytorch_model-00002-of-00002.bin": second}
    (root / "hf").mkdir()
    for name, part in shards.items():
        torch.save(part, root / "hf" / name)
    write_index(root / "hf" / "pytorch_model.bin.index.json", shards)
    (root / "hf" / "config.json").write_text("{}")
    return "hf"


def fmt_hf_both_prefers_safetensors(root: Path) -> str:
    """The .bin beside it is garbage: fetching only succeeds if safetensors is the one read."""
    fmt_hf_safetensors(root)
    (root / "hf" / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    return "hf"


def fmt_pt(root: Path) -> str:
    torch.save(reference_state(), root / "weights.pt")
    return "weights.pt"


def fmt_pth_state_dict_wrapper(root: Path) -> str:
    torch.save({"state_dict": reference_state(), "epoch": 90, "arch": "tiny"}, root / "ckpt.pth")
    return "ckpt.pth"


def fmt_bin_model_wrapper(root: Path) -> str:
    torch.save({"model": reference_state(), "optimizer": {"lr": 0.1}}, root / "weights.bin")
    return "weights.bin"


def fmt_legacy_torch_serialisation(root: Path) -> str:
    torch.save(reference_state(), root / "old.pt", _use_new_zipfile_serialization=False)
    return "old.pt"


FORMATS = [
    fmt_safetensors, fmt_safetensors_shards_no_index, fmt_safetensors_shards_index, fmt_hf_safetensors,
    fmt_hf_bin, fmt_hf_bin_sharded, fmt_hf_both_prefers_safetensors, fmt_pt, fmt_pth_state_dict_wrapper,
    fmt_bin_model_wrapper, fmt_legacy_torch_serialisation,
]


def file_row(path: str, model: str = "tiny", **extra) -> dict:
    return {"model": model, "series": "s", "source": f"file:{path}", "accuracy": None, **extra}


@pytest.mark.parametrize("writer", FORMATS, ids=lambda f: f.__name__.removeprefix("fmt_"))
def test_file_formats_round_trip(tmp_path, writer, monkeypatch):
    sheet_dir = tmp_path / "sheet"
    sheet_dir.mkdir()
    relative = writer(sheet_dir)
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the sheet, not the working dir
    out = tmp_path / "resources" / "models" / "tiny"
    fetch_model(file_row(relative, width="ignored for file rows"), out, sheet_dir=sheet_dir)

    assert {p.name for p in out.iterdir()} == OUTPUTS
    layers, meta = read_outputs(out)
    assert layers["model"] == "tiny"
    assert [(l["name"], l["tensor"], l["type"], l["shape"]) for l in layers["layers"]] == EXPECTED_LAYERS
    assert [l["depth"] for l in layers["layers"]] == list(range(len(EXPECTED_LAYERS)))

    stored = load_file(out / "model.safetensors")
    state = reference_state()
    assert set(stored) == {tensor for _, tensor, _, _ in EXPECTED_LAYERS}
    for layer in layers["layers"]:
        tensor = stored[layer["tensor"]]
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, state[layer["tensor"]])
        assert layer["sha256"] == hashlib.sha256(state[layer["tensor"]].numpy().tobytes()).hexdigest()

    assert meta["num_params"] == EXPECTED_NUM_PARAMS
    inventory = {t["tensor"]: t for t in json.loads((out / "tensors.json").read_text())["tensors"]}
    assert inventory.keys() == state.keys()
    assert {key: t["reason"] for key, t in inventory.items() if t["reason"]} == EXPECTED_LEFT_OUT
    assert {t["layer"] for t in inventory.values() if not t["reason"]} == {name for name, *_ in EXPECTED_LAYERS}
    assert all(t["shape"] == list(state[key].shape) for key, t in inventory.items())
    assert meta["accuracy"] is None and meta["accuracy_source"] is None
    assert meta["options"] == {}
    assert (meta["model"], meta["series"], meta["source"]) == ("tiny", "s", f"file:{relative}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("container", ["safetensors", "torch"])
def test_file_weights_keep_their_stored_dtype(tmp_path, dtype, container):
    """No wider copy in resources/: a bf16 weight stays 2 bytes (issue 14, item 3); its layer hash
    is that of its float32 widening, whatever it is stored as."""
    weight = torch.randn(8, 5).to(dtype)
    if container == "safetensors":
        save_file({"fc.weight": weight}, tmp_path / "w.safetensors")
    else:
        torch.save({"fc.weight": weight}, tmp_path / "w.safetensors")  # content, not name, decides
    fetch_model(file_row("w.safetensors", accuracy=76.5), tmp_path / "out", sheet_dir=tmp_path)
    stored = load_file(tmp_path / "out" / "model.safetensors")["fc.weight"]
    assert stored.dtype == dtype and torch.equal(stored, weight)
    layers, _ = read_outputs(tmp_path / "out")
    assert layers["layers"][0]["sha256"] == hashlib.sha256(weight.float().numpy().tobytes()).hexdigest()
    _, meta = read_outputs(tmp_path / "out")
    assert meta["accuracy"] == 76.5 and meta["accuracy_source"] == "zoo sheet"


def test_a_fetch_that_fails_while_writing_leaves_no_file(tmp_path, monkeypatch):
    """The disk fills up after two of the weights are written: nothing is left that a later run
    could take for complete, not even the temporary file."""
    from zooscope.sources import fetch as sources

    save_file(reference_state(), tmp_path / "model.safetensors")
    written = []

    real_bytes = sources.stored_bytes

    def disk_full_on_the_third(tensor):
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(tensor)
        return real_bytes(tensor)

    monkeypatch.setattr(sources, "stored_bytes", disk_full_on_the_third)
    with pytest.raises(OSError, match="No space left"):
        fetch_model(file_row("model.safetensors"), tmp_path / "out", sheet_dir=tmp_path)
    assert len(written) == 2 and list((tmp_path / "out").iterdir()) == []


def test_tied_tensors_in_a_torch_file_count_once(tmp_path):
    shared = torch.randn(30, 6)
    torch.save({"embed.weight": shared, "lm_head.weight": shared}, tmp_path / "tied.pt")
    fetch_model(file_row("tied.pt"), tmp_path / "out", sheet_dir=tmp_path)
    layers, meta = read_outputs(tmp_path / "out")
    assert [(l["name"], l["type"]) for l in layers["layers"]] == [("embed", "Embedding")]
    assert meta["num_params"] == 30 * 6


# --------------------------------------------------------------------------- refused pickles


class WritesFile:
    """A pickle payload that, when unpickled, creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_the_malicious_payload_is_real(tmp_path):
    """Guard against a vacuous refusal test: plain pickle does run the payload."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(WritesFile(marker)))
    assert marker.exists()


@pytest.mark.parametrize("writer", [
    lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=2)),
    lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)),
    lambda obj, path: torch.save(obj, path),
], ids=["pickle-protocol-2", "pickle-highest", "torch-save"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name", ["evil.pt", "evil.bin", "hf/pytorch_model.bin"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    writer({"fc.weight": torch.zeros(2, 2), "payload": WritesFile(marker)}, path)
    source = str(Path(name).parent) if name.startswith("hf/") else name
    with pytest.raises(FetchError) as error:
        fetch_model(file_row(source, model="evil-model"), tmp_path / "out", sheet_dir=tmp_path)
    message = str(error.value)
    assert not marker.exists()
    assert "evil-model" in message and str(path) in message
    assert "refusing" in message and "safetensors" in message
    assert not (tmp_path / "out").exists()


def test_a_training_checkpoint_with_its_args_and_numpy_values_is_read(tmp_path):
    """torchvision's reference scripts save {"model", "optimizer", "lr_scheduler", "epoch", "args"}
    with ``args`` an argparse.Namespace (paths in it), and many scripts keep numpy scalars and
    arrays beside the state dict: data only, so the file is read, and the model's weights are the
    layers (the optimizer state is not a candidate)."""
    import argparse

    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
    network(torch.randn(3, 16)).sum().backward()
    optimizer.step()
    torch.save({"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 30).state_dict(), "epoch": 5,
                "args": argparse.Namespace(arch="mlp", lr=0.1, output_dir=Path("/runs/a")),
                "best_acc": np.float64(0.75), "history": np.array([0.5, 0.7]), "classes": np.array(["a", "b"])},
               tmp_path / "checkpoint.pth")
    fetch_model(file_row("checkpoint.pth"), tmp_path / "out", sheet_dir=tmp_path)
    layers, meta = read_outputs(tmp_path / "out")
    assert meta["checkpoint"]["key"] == "model"
    stored = load_file(tmp_path / "out" / "model.safetensors")
    assert [layer["name"] for layer in layers["layers"]] == ["0", "2"]
    assert all(torch.equal(stored[f"{i}.weight"], network[i].weight.detach()) for i in (0, 2))


class RunConfig:
    """A training config object as Hydra's DictConfig pickles one: an instance of a class of its own
    whose state holds a defaultdict and nested values (NEWOBJ and BUILD, no call)."""

    def __init__(self):
        from collections import defaultdict

        self.content = defaultdict(list, {"layers": [1, 2]})
        self.flags = {"readonly": False}


def test_a_checkpoint_whose_hyperparameters_are_objects_is_read(tmp_path):
    """Lightning checkpoints of Hydra runs keep their config as an object (omegaconf's DictConfig,
    with a defaultdict inside): read as inert data, the state dict beside it is the model."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(6, 4))
    torch.save({"state_dict": network.state_dict(), "hyper_parameters": {"cfg": RunConfig()}, "epoch": 2},
               tmp_path / "run.ckpt")
    with pytest.raises(__import__("pickle").UnpicklingError):
        torch.load(tmp_path / "run.ckpt", weights_only=True)
    fetch_model(file_row("run.ckpt", model="hydra"), tmp_path / "out", sheet_dir=tmp_path)
    layers, meta = read_outputs(tmp_path / "out")
    assert meta["checkpoint"]["key"] == "state_dict" and [l["name"] for l in layers["layers"]] == ["0"]


@pytest.mark.parametrize("wrap", [lambda payload: __import__("argparse").Namespace(x=payload),
                                  lambda payload: np.array([payload], dtype=object)], ids=["namespace", "object-array"])
def test_a_payload_inside_the_allowed_data_classes_is_refused_and_never_runs(tmp_path, wrap):
    marker = tmp_path / "pwned"
    torch.save({"fc.weight": torch.zeros(2, 2), "args": wrap(WritesFile(marker))}, tmp_path / "evil.pt")
    with pytest.raises(FetchError, match="refusing"):
        fetch_model(file_row("evil.pt", model="evil"), tmp_path / "out", sheet_dir=tmp_path)
    assert not marker.exists()


def test_a_pickled_module_is_read_as_data_without_importing_its_classes(tmp_path, monkeypatch):
    """torch.save(model) and YOLO-style checkpoints ({"model": <the nn.Module>, "ema": None,
    "optimizer": None, "train_args": {...}}) pickle the module itself, which the weights-only
    unpickler refuses: the file is read again as data (each object an inert record), the module
    becomes its state dict, and the module that defines its class is never imported."""
    import sys

    marker = tmp_path / "imported"
    (tmp_path / "userlib.py").write_text(
        f"open({str(marker)!r}, 'a').write('x')\n"
        "import torch\n"
        "class Detector(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))\n"
        "        self.head = torch.nn.Linear(8, 4)\n"
        "        self.register_buffer('anchors', torch.ones(3, 2), persistent=False)\n"
        "        self.where, self.stride = torch.device('cpu'), __import__('numpy').array([8.0, 16.0])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import userlib

    torch.manual_seed(0)
    detector = userlib.Detector().half()
    torch.save({"model": detector, "ema": None, "optimizer": None, "train_args": {"lr": 0.01}, "epoch": -1},
               tmp_path / "best.pt")
    torch.save(nn.Sequential(nn.Linear(4, 3)), tmp_path / "whole_model.pt")
    del sys.modules["userlib"]
    assert marker.read_text() == "x"
    fetch_model(file_row("best.pt", model="detector"), tmp_path / "out", sheet_dir=tmp_path)
    assert marker.read_text() == "x" and "userlib" not in sys.modules  # never imported again
    layers, meta = read_outputs(tmp_path / "out")
    assert meta["checkpoint"]["key"] == "model"
    assert [(l["name"], l["type"]) for l in layers["layers"]] == [("backbone.0", "Conv2d"), ("head", "Linear")]
    stored = load_file(tmp_path / "out" / "model.safetensors")
    state = detector.state_dict()
    assert all(torch.equal(stored[l["tensor"]], state[l["tensor"]]) for l in layers["layers"])
    records = {t["tensor"] for t in json.loads((tmp_path / "out" / "tensors.json").read_text())["tensors"]}
    assert records == state.keys()  # the non-persistent buffer is not part of it
    fetch_model(file_row("whole_model.pt", model="whole"), tmp_path / "out2", sheet_dir=tmp_path)
    assert [l["name"] for l in read_outputs(tmp_path / "out2")[0]["layers"]] == ["0"]


def test_torch_load_is_only_called_weights_only(tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    fmt_pt(tmp_path)
    fetch_model(file_row("weights.pt"), tmp_path / "out", sheet_dir=tmp_path)
    assert calls == [{"map_location": "cpu", "weights_only": True}]


# --------------------------------------------------------------------------- broken files


def _truncated_safetensors(root):
    save_file(reference_state(), root / "w.safetensors")
    data = (root / "w.safetensors").read_bytes()
    (root / "w.safetensors").write_bytes(data[: len(data) - 100])
    return "w.safetensors"


def _truncated_torch(root):
    torch.save(reference_state(), root / "w.pt")
    data = (root / "w.pt").read_bytes()
    (root / "w.pt").write_bytes(data[: len(data) // 2])
    return "w.pt"


def _garbage(name):
    def write(root):
        (root / name).write_bytes(np.random.default_rng(0).bytes(300))
        return name
    return write


def _empty(name):
    def write(root):
        (root / name).write_bytes(b"")
        return name
    return write


def _missing_shard(root):
    fmt_safetensors_shards_index(root)
    (root / "hf" / "model-00002-of-00002.safetensors").unlink()
    return "hf"


def _empty_directory(root):
    (root / "empty").mkdir()
    return "empty"


def _not_a_weights_file(root):
    (root / "w.pt").write_text("epoch,loss\n1,0.5\n")
    return "w.pt"


def _no_tensors(root):
    torch.save({"epoch": 3, "note": "no weights here"}, root / "w.pt")
    return "w.pt"


@pytest.mark.parametrize("writer, words", [
    (lambda root: "does/not/exist.safetensors", "not found"),
    (_truncated_safetensors, "cannot read safetensors"),
    (_garbage("g.safetensors"), "not a weights file"),  # the content decides, not the name
    (_empty("e.safetensors"), "not a weights file"),
    (_truncated_torch, "cannot read PyTorch file"),
    (_garbage("g.pt"), "not a weights file"),
    (_empty("e.pt"), "not a weights file"),
    (_missing_shard, "missing"),
    (_empty_directory, "no weights in directory"),
    (_not_a_weights_file, "not a weights file"),
    (_no_tensors, "no tensors found"),
], ids=["missing", "truncated-safetensors", "garbage-safetensors", "empty-safetensors",
        "truncated-torch", "garbage-torch", "empty-torch", "missing-shard", "empty-directory",
        "not-a-weights-file", "no-tensors"])
def test_broken_files_name_model_and_path(tmp_path, writer, words):
    relative = writer(tmp_path)
    with pytest.raises(FetchError) as error:
        fetch_model(file_row(relative, model="broken"), tmp_path / "out", sheet_dir=tmp_path)
    message = str(error.value)
    assert "'broken'" in message and words in message
    assert str(tmp_path / relative) in message or str((tmp_path / relative).resolve()) in message
    assert not (tmp_path / "out").exists()


def test_shard_index_pointing_outside_its_folder(tmp_path):
    (tmp_path / "hf").mkdir()
    save_file({"w.weight": torch.zeros(2, 2)}, tmp_path / "outside.safetensors")
    write_index(tmp_path / "hf" / "model.safetensors.index.json",
                {"../outside.safetensors": {"w.weight": None}})
    with pytest.raises(FetchError, match="outside its folder"):
        fetch_model(file_row("hf"), tmp_path / "out", sheet_dir=tmp_path)


def test_a_hugging_face_cache_snapshot_folder_is_read(tmp_path):
    """A cache snapshot links each file to ../../blobs/SHA256: links out of the folder are no escape."""
    fmt_safetensors_shards_index(tmp_path)
    blobs, snapshot = tmp_path / "repo" / "blobs", tmp_path / "repo" / "snapshots" / "abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in (tmp_path / "hf").iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        file.rename(blobs / digest)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", digest))
    fetch_model(file_row(str(snapshot)), tmp_path / "out", sheet_dir=tmp_path)
    layers, _ = read_outputs(tmp_path / "out")
    assert [l["name"] for l in layers["layers"]] == [name for name, *_ in EXPECTED_LAYERS]


# --------------------------------------------------------------------------- sheet rows


@pytest.mark.parametrize("text, expected", [
    ("file:weights/a.safetensors", ("file", "weights/a.safetensors")),
    ("train:mlp", ("train", "mlp")),
    (" random:cnn ", ("random", "cnn")),
    ("file:C:/x.pt", ("file", "C:/x.pt")),
])
def test_parse_source(text, expected):
    assert parse_source(text) == expected


@pytest.mark.parametrize("text", ["foo:bar", "train", "train:", "hub:resnet50", ""])
def test_unknown_source(text):
    with pytest.raises(RowError) as error:
        parse_source(text, model="x")
    message = str(error.value)
    assert message.startswith(f"unknown source {text!r} for model 'x'; ")
    # every kind, with an example of it, in the registry's order
    listed = "a source is one of: " + ", ".join(f"{syntax} (e.g. {example})" for syntax, example in [
        ("file:PATH", "file:weights/model.safetensors"), ("train:ARCH", "train:mlp"), ("random:ARCH", "random:cnn"),
        ("peft:PATH", "peft:adapters/my-lora"), ("finetune:MODE", "finetune:lora"),
        ("torchvision:NAME[@WEIGHTS]", "torchvision:resnet50@IMAGENET1K_V1"),
        ("timm:NAME", "timm:resnet50.a1_in1k"), ("hf:REPO[@REVISION]", "hf:openai-community/gpt2@main")])
    assert message.endswith(listed)
    # a kind misspelt or without its argument: the closest kind first
    assert ("did you mean train:ARCH (e.g. train:mlp)?" in message) == text.startswith("train")


def test_unknown_source_through_fetch(tmp_path):
    row = {"model": "x", "series": "s", "source": "foo:bar", "accuracy": None}
    with pytest.raises(RowError, match=r"unknown source 'foo:bar' for model 'x'; a source is one of: file:PATH "):
        fetch_model(row, tmp_path / "out", sheet_dir=tmp_path)


def train_row(**columns) -> dict:
    return {"model": "m", "series": "s", "source": "train:mlp", "accuracy": None,
            "width": "16", "depth": "1", "epochs": "1", **columns}


@pytest.mark.parametrize("row, message", [
    (train_row(dropout="0.1"), r"model 'm': unknown option column 'dropout'; valid option columns: channels, depth, width"),
    (train_row(source="random:mlp"), r"model 'm': option column 'epochs' does not apply to random: sources"),
    (train_row(width="wide"), r"model 'm': column 'width' must be an integer, got 'wide'"),
    (train_row(depth="1.5"), r"model 'm': column 'depth' must be an integer, got '1.5'"),
    (train_row(lr="fast"), r"model 'm': column 'lr' must be a number, got 'fast'"),
    (train_row(label_noise="2"), r"model 'm': column 'label_noise' must be in \[0, 1\]"),
    (train_row(epochs="0"), r"model 'm': column 'epochs' must be positive"),
    (train_row(channels="8"), r"model 'm': unknown option\(s\) 'channels' for architecture 'mlp'; valid options: depth, width"),
    (train_row(source="train:resnet"), r"model 'm': unknown architecture 'resnet'; valid architectures: cnn, .*mlp"),
    (train_row(accuracy="high"), r"model 'm': column 'accuracy' must be a number"),
    (train_row(accuracy=0.7, source="random:mlp", epochs=None), None),  # 0.7 % is a valid (if poor) accuracy
    (train_row(accuracy=170.0), r"model 'm': column 'accuracy' must be a percentage in \[0, 100\]"),
    (train_row(model="../escape"), r"invalid model id '../escape'"),
])
def test_invalid_rows(tmp_path, row, message):
    if message is None:
        fetch_model(row, tmp_path / "out", sheet_dir=tmp_path)
        return
    with pytest.raises(RowError, match=message):
        fetch_model(row, tmp_path / "out", sheet_dir=tmp_path)
    assert not (tmp_path / "out").exists()


def test_option_values_as_read_by_csv_or_pandas():
    row = {"model": "m", "series": "s", "source": "train:mlp", "accuracy": None,
           "width": 64.0, "depth": "2", "epochs": 3, "lr": "0.01", "seed": float("nan"), "label_noise": ""}
    assert parse_options(row, KINDS["train"]) == {"width": 64, "depth": 2, "epochs": 3, "lr": 0.01}
    assert parse_options({**row, "bogus": "x"}, KINDS["file"]) == {}  # file: rows ignore options


# --------------------------------------------------------------------------- train: and random:


def test_train_row_outputs(tmp_path, caplog):
    row = train_row(accuracy=99.0, seed="3")
    fetch_model(row, tmp_path / "m", sheet_dir=tmp_path)
    assert {p.name for p in (tmp_path / "m").iterdir()} == OUTPUTS
    layers, meta = read_outputs(tmp_path / "m")
    assert [(l["name"], l["tensor"], l["type"], l["shape"], l["depth"]) for l in layers["layers"]] == [
        ("net.0", "net.0.weight", "Linear", [16, 64], 0),
        ("net.2", "net.2.weight", "Linear", [10, 16], 1),
    ]
    assert meta["num_params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert meta["accuracy"] == meta["training"]["test_accuracy"] != 99.0  # the sheet's is ignored
    assert meta["accuracy_source"] == "measured: digits test split (450 samples)"
    assert "ignoring the sheet's accuracy" in caplog.text
    assert meta["options"] == {"width": 16, "depth": 1, "epochs": 1, "seed": 3}
    assert meta["training"]["seed"] == 3 and meta["training"]["epochs"] == 1
    assert meta["training"]["label_noise"] == 0.0
    assert meta["architecture"] == {"name": "mlp", "options": {"width": 16, "depth": 1}}
    assert "seconds" not in json.dumps(meta)
    # the analysed weights first, then the rest of the module's state (for the Jacobian stage)
    with safe_open(tmp_path / "m" / "model.safetensors", framework="pt") as handle:
        assert list(handle.keys()) == ["net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight"]
    header_order = sorted(json.loads(header_of(tmp_path / "m" / "model.safetensors")).items(),
                          key=lambda item: item[1].get("data_offsets", [-1])[0])
    assert [key for key, _ in header_order if key != "__metadata__"] == [
        "net.0.weight", "net.2.weight", "net.0.bias", "net.2.bias"]


def header_of(path):
    data = Path(path).read_bytes()
    return data[8:8 + int.from_bytes(data[:8], "little")]


def test_module_state_of_every_dtype_round_trips_through_the_fetch_writer(tmp_path):
    """Buffers of other dtypes and 0-d tensors (BatchNorm's num_batches_tracked) are stored as
    they are, readable by safetensors' own loader, and the digest is the file's (weights_digest)."""
    from zooscope.layers import layers_from_module
    from zooscope.sources.built import unanalysed_state
    from zooscope.sources.fetch import weights_digest, write_safetensors

    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 4))
    network.register_buffer("mask", torch.tensor([True, False, True]))
    network.register_buffer("scale16", torch.randn(5).half())
    network[1].num_batches_tracked += 7
    layers = layers_from_module(network)
    others = unanalysed_state(network, layers)
    assert {"1.num_batches_tracked", "mask", "scale16", "0.bias", "1.weight"} <= others.keys()
    digest = write_safetensors(tmp_path / "m.safetensors", layers, others)
    assert digest == weights_digest(tmp_path / "m.safetensors")
    stored = load_file(tmp_path / "m.safetensors")
    state = network.state_dict()
    assert stored.keys() == state.keys()
    for key, value in state.items():
        assert stored[key].dtype == value.dtype and torch.equal(stored[key], value), key


def test_train_row_is_deterministic(tmp_path):
    row = {"model": "c", "series": "s", "source": "train:cnn", "accuracy": None,
           "channels": "8", "epochs": "1", "label_noise": "0.5"}
    fetch_model(row, tmp_path / "a", sheet_dir=tmp_path)
    fetch_model(row, tmp_path / "b", sheet_dir=tmp_path)
    for name in OUTPUTS:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_random_row(tmp_path):
    row = {"model": "r", "series": "baseline", "source": "random:cnn", "accuracy": None, "channels": "8"}
    fetch_model(row, tmp_path / "a", sheet_dir=tmp_path)
    layers, meta = read_outputs(tmp_path / "a")
    assert [(l["name"], l["type"], l["shape"]) for l in layers["layers"]] == [
        ("features.0", "Conv2d", [8, 1, 3, 3]),
        ("features.2", "Conv2d", [8, 8, 3, 3]),
        ("features.5", "Conv2d", [16, 8, 3, 3]),
        ("classifier", "Linear", [10, 16]),
    ]
    assert meta["accuracy"] < 30.0  # untrained: about chance (10 %)
    assert meta["accuracy_source"].startswith("measured: digits test split")
    assert "training" not in meta and meta["init_seed"] == 0

    fetch_model({**row, "accuracy": 10.0}, tmp_path / "b", sheet_dir=tmp_path)
    _, meta_b = read_outputs(tmp_path / "b")
    assert meta_b["accuracy"] == 10.0 and meta_b["accuracy_source"] == "zoo sheet"
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()

    fetch_model({**row, "seed": "1"}, tmp_path / "c", sheet_dir=tmp_path)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != (tmp_path / "c" / "model.safetensors").read_bytes()


def test_fetch_leaves_global_torch_state_alone(tmp_path):
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fetch_model(train_row(), tmp_path / "m", sheet_dir=tmp_path, threads=1)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_demo_zoo_rows_are_valid():
    """Every row of the shipped demo sheet parses (no training: that is the workflow's job)."""
    from zooscope.config import load_schema
    from zooscope.zoo import read_zoo_sheet

    repo = Path(__file__).resolve().parents[1]
    rows = read_zoo_sheet(repo / "zoos" / "demo.tsv", load_schema(repo / "schemas" / "zoo.schema.yaml"))
    series = {row.series for row in rows}
    assert {"mlp-width", "cnn-width", "label-noise", "baseline"} <= series
    noise = sorted(r.options.get("label_noise", 0) for r in rows if r.series == "label-noise")
    assert noise == [0, 0.25, 0.5, 1.0]


def test_fetching_a_safetensors_file_imports_no_torch(tmp_path):
    """The file: route reads headers and numpy maps only: a fetch job spends no start-up on torch."""
    import subprocess
    import sys

    save_file(reference_state(), tmp_path / "model.safetensors")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from zooscope.sources.fetch import fetch_model\n"
        f"fetch_model({{'model': 'm', 'series': 's', 'source': 'file:model.safetensors', 'accuracy': None}}, "
        f"Path({str(tmp_path / 'out')!r}), sheet_dir=Path({str(tmp_path)!r}))\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    fetch_model(file_row("model.safetensors", model="m"), tmp_path / "in_process", sheet_dir=tmp_path)
    for name in OUTPUTS:
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "in_process" / name).read_bytes()
