"""Tests of the hub sources (zooscope.sources.hubs), offline: every loader reads weights that the test
made at random initialisation and put where the hub download would have put them (torch hub's
checkpoint cache, a Hugging Face cache snapshot), through the same code path a download takes."""
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import read_outputs
from zooscope.config import load_schema
from zooscope.sources.base import FetchError
from zooscope.sources.fetch import fetch_model
from zooscope.zoo import RowError, parse_row, parse_source, read_zoo_sheet, zoo_schema

import torchvision
import timm
import transformers

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# torchvision's ResNet18_Weights.IMAGENET1K_V1: its published file name and top-1 accuracy.
RESNET18_FILE = "resnet18-f37072fd.pth"
RESNET18_ACC1 = 69.758


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty TORCH_HOME and HF_HOME, offline: nothing can come from the network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.fixture
def waits(monkeypatch):
    """The seconds every time.sleep inside the test asked for (retry backoffs), without sleeping."""
    asked = []
    monkeypatch.setattr(time, "sleep", asked.append)
    return asked


def hub_row(source: str, model: str = "hub-model", accuracy=None) -> dict:
    return {"model": model, "series": "s", "source": source, "accuracy": accuracy}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_tensors(folder: Path) -> dict:
    """Every tensor of a folder's safetensors shards, by name."""
    tensors = {}
    for shard in folder.glob("*.safetensors"):
        tensors.update(load_file(shard))
    return tensors


def put_in_hf_cache(hf_home: Path, repo: str, folder: Path, commit: str = COMMIT) -> Path:
    """Lay out ``folder``'s files as huggingface_hub caches a download: blobs named by their
    sha256, a snapshot of relative links to them, and refs/main naming the snapshot."""
    repo_dir = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for file in sorted(folder.iterdir()):
        blob = repo_dir / "blobs" / sha256(file)
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def resnet18_names() -> list[str]:
    """ResNet-18's 21 analysed layers, from its definition (as in test_layers.py)."""
    names = ["conv1"]
    for stage in range(1, 5):
        for block in range(2):
            names += [f"layer{stage}.{block}.conv1", f"layer{stage}.{block}.conv2"]
            if block == 0 and stage > 1:
                names.append(f"layer{stage}.{block}.downsample.0")
    return names + ["fc"]


# --------------------------------------------------------------------------- torchvision


def put_torchvision_checkpoint(root: Path) -> dict:
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    checkpoints = root / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / RESNET18_FILE)
    return state


def test_torchvision_from_the_torch_hub_cache(caches, monkeypatch):
    state = put_torchvision_checkpoint(caches)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    out = caches / "out"
    fetch_model(hub_row("torchvision:resnet18@IMAGENET1K_V1"), out, sheet_dir=caches)
    assert calls and all(value is True for value in calls)  # torchvision's own default is False

    layers, meta = read_outputs(out)
    assert [l["name"] for l in layers["layers"]] == resnet18_names()
    stored = load_file(out / "model.safetensors")
    for layer in layers["layers"]:
        assert torch.equal(stored[layer["tensor"]], state[layer["tensor"]])
    assert meta["accuracy"] == RESNET18_ACC1
    assert meta["accuracy_source"] == "torchvision ResNet18_Weights.IMAGENET1K_V1 meta: ImageNet-1K acc@1"
    assert meta["num_params"] == 11_689_512  # ResNet-18's published parameter count
    weights = meta["weights"]
    assert weights["library"] == "torchvision" and weights["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert weights["url"].endswith("/" + RESNET18_FILE)
    checkpoint = caches / "torch" / "hub" / "checkpoints" / RESNET18_FILE
    assert weights["files"] == [{"file": RESNET18_FILE, "sha256": sha256(checkpoint)}]


def test_torchvision_sheet_accuracy_wins(caches):
    put_torchvision_checkpoint(caches)
    fetch_model(hub_row("torchvision:resnet18@IMAGENET1K_V1", accuracy=70.0), caches / "out", sheet_dir=caches)
    _, meta = read_outputs(caches / "out")
    assert meta["accuracy"] == 70.0 and meta["accuracy_source"] == "zoo sheet"


class WritesFile:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_a_malicious_torchvision_checkpoint_is_refused_and_never_runs(caches):
    checkpoints = caches / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    marker = caches / "pwned"
    torch.save({"conv1.weight": torch.zeros(1), "payload": WritesFile(marker)}, checkpoints / RESNET18_FILE)
    with pytest.raises(FetchError) as error:
        fetch_model(hub_row("torchvision:resnet18@IMAGENET1K_V1", model="evil"), caches / "out", sheet_dir=caches)
    message = str(error.value)
    assert not marker.exists()
    assert "'evil'" in message and "torchvision:resnet18@IMAGENET1K_V1" in message
    assert "refusing" in message and "safetensors" in message
    assert not (caches / "out").exists()


@pytest.mark.parametrize("source, words", [
    ("torchvision:resnet51", "unknown torchvision model 'resnet51'; did you mean resnet50"),
    ("torchvision:resnet18@IMAGENET1K_V9", "has no weights 'IMAGENET1K_V9'; valid: IMAGENET1K_V1, DEFAULT"),
    ("timm:resnet18.no_such_tag", "unknown timm pretrained tag 'resnet18.no_such_tag'; valid: "),
    ("timm:resnet181", "unknown timm model 'resnet181'; did you mean"),
])
def test_unknown_hub_names(caches, source, words):
    with pytest.raises(FetchError) as error:
        fetch_model(hub_row(source, model="typo"), caches / "out", sheet_dir=caches)
    assert str(error.value).startswith("model 'typo': ") and words in str(error.value)


# --------------------------------------------------------------------------- timm


def test_timm_from_the_hugging_face_cache(caches):
    torch.manual_seed(0)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    (caches / "download").mkdir()
    save_file(state, caches / "download" / "model.safetensors")
    put_in_hf_cache(caches / "hf", "timm/resnet18.a1_in1k", caches / "download")

    fetch_model(hub_row("timm:resnet18.a1_in1k"), caches / "out", sheet_dir=caches)
    layers, meta = read_outputs(caches / "out")
    assert [l["name"] for l in layers["layers"]] == resnet18_names()  # timm's ResNet names its layers alike
    stored = load_file(caches / "out" / "model.safetensors")
    for layer in layers["layers"]:
        assert torch.equal(stored[layer["tensor"]], state[layer["tensor"]])
    assert meta["accuracy"] is None and meta["accuracy_source"] is None
    weights = meta["weights"]
    assert (weights["library"], weights["pretrained"], weights["repo"], weights["revision"]) == (
        "timm", "resnet18.a1_in1k", "timm/resnet18.a1_in1k", COMMIT)
    assert weights["files"] == [{"file": "model.safetensors",
                                 "sha256": sha256(caches / "download" / "model.safetensors")}]


# --------------------------------------------------------------------------- Hugging Face


def tiny_gpt2_folder(root: Path, **save_options) -> Path:
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    folder = root / "download"
    transformers.GPT2Model(config).save_pretrained(folder, **save_options)
    return folder


# GPT2Model's layers, counted by hand: wte, wpe, then per block c_attn (3E x E), c_proj, c_fc (4E x E), c_proj.
GPT2_LAYERS = [("wte", "Embedding", [100, 32]), ("wpe", "Embedding", [16, 32])] + [
    (f"h.{i}.{name}", "Linear", shape) for i in range(2) for name, shape in
    [("attn.c_attn", [96, 32]), ("attn.c_proj", [32, 32]), ("mlp.c_fc", [128, 32]), ("mlp.c_proj", [32, 128])]
]


@pytest.mark.parametrize("sharded", [False, True], ids=["single-file", "sharded"])
@pytest.mark.parametrize("revision", ["", f"@{COMMIT}"], ids=["main", "commit"])
def test_hf_from_the_hugging_face_cache(caches, sharded, revision):
    folder = tiny_gpt2_folder(caches, **({"max_shard_size": "20KB"} if sharded else {}))
    weight_files = sorted(p.name for p in folder.iterdir() if p.name != "config.json")
    assert len(weight_files) > 2 if sharded else weight_files == ["model.safetensors"]
    put_in_hf_cache(caches / "hf", "openai-community/gpt2", folder)

    fetch_model(hub_row(f"hf:openai-community/gpt2{revision}"), caches / "out", sheet_dir=caches)
    layers, meta = read_outputs(caches / "out")
    assert [(l["name"], l["type"], l["shape"]) for l in layers["layers"]] == GPT2_LAYERS
    stored = load_file(caches / "out" / "model.safetensors")
    original = {}
    for name in weight_files:
        if name.endswith(".safetensors"):
            original.update(load_file(folder / name))
    assert torch.equal(stored["h.0.attn.c_attn.weight"], original["h.0.attn.c_attn.weight"].T)
    assert torch.equal(stored["wte.weight"], original["wte.weight"])
    weights = meta["weights"]
    assert (weights["library"], weights["class"], weights["repo"], weights["revision"], weights["loaded"]) == (
        "transformers", "GPT2Model", "openai-community/gpt2", COMMIT, "tensor by tensor")
    assert sorted(f["file"] for f in weights["files"]) == weight_files
    assert all(f["sha256"] == sha256(folder / f["file"]) for f in weights["files"])
    assert meta["num_params"] == sum(t.numel() for t in original.values())  # GPT2Model: nothing tied


def tiny_bert_config():
    return transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=16, type_vocab_size=2)


# BertModel's analysed weights, counted by hand (as in test_layers.py): 3 embeddings, per layer
# query, key, value, attention output, intermediate and output dense, then the pooler.
BERT_LAYERS = ["embeddings.word_embeddings", "embeddings.position_embeddings", "embeddings.token_type_embeddings"] + [
    f"encoder.layer.{i}.{name}" for i in range(2) for name in (
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
        "intermediate.dense", "output.dense")
] + ["pooler.dense"]


@pytest.fixture
def no_whole_model_loads(monkeypatch):
    """Any from_pretrained (which would load every weight into the module) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded whole")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))


def test_a_safetensors_checkpoint_with_a_task_head_is_converted_tensor_by_tensor(caches, no_whole_model_loads):
    """bert-base-uncased is saved from BertForPreTraining (config.architectures): its tree is that
    class's, the MLM and NSP heads after the encoder (depth order ends with the head), the MLM
    decoder tied to the word embeddings (one layer)."""
    torch.manual_seed(0)
    transformers.BertForPreTraining(tiny_bert_config()).save_pretrained(caches / "download", max_shard_size="20KB")
    put_in_hf_cache(caches / "hf", "google-bert/bert-base-uncased", caches / "download")
    original = folder_tensors(caches / "download")
    assert "bert.pooler.dense.weight" in original and "cls.predictions.transform.dense.weight" in original

    fetch_model(hub_row("hf:google-bert/bert-base-uncased"), caches / "out", sheet_dir=caches)
    layers, meta = read_outputs(caches / "out")
    assert [l["name"] for l in layers["layers"]] == [f"bert.{name}" for name in BERT_LAYERS] + [
        "cls.predictions.transform.dense", "cls.seq_relationship"]
    stored = load_file(caches / "out" / "model.safetensors")
    for layer in layers["layers"]:
        assert torch.equal(stored[layer["tensor"]], original[layer["tensor"]])
    assert meta["weights"]["class"] == "BertForPreTraining" and meta["weights"]["loaded"] == "tensor by tensor"
    assert meta["num_params"] == sum(t.numel() for t in original.values())


def test_tensor_by_tensor_and_whole_loading_give_the_same_bytes(caches, monkeypatch):
    """A second method: transformers' own loading of the same cached checkpoint (bfloat16, a GPT-2
    with its language-model head, whose lm_head is tied to wte and saved once)."""
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).to(torch.bfloat16).save_pretrained(caches / "download")
    put_in_hf_cache(caches / "hf", "openai-community/gpt2", caches / "download")
    fetch_model(hub_row("hf:openai-community/gpt2"), caches / "streamed", sheet_dir=caches)

    from zooscope.sources import hf

    monkeypatch.setattr(hf, "hf_checkpoint", lambda *args: None)
    fetch_model(hub_row("hf:openai-community/gpt2"), caches / "whole", sheet_dir=caches)
    streamed, whole = read_outputs(caches / "streamed"), read_outputs(caches / "whole")
    assert (caches / "streamed" / "model.safetensors").read_bytes() == (caches / "whole" / "model.safetensors").read_bytes()
    # GPT2LMHeadModel (config.architectures): the base model under "transformer.", lm_head tied to wte
    assert streamed[0] == whole[0] and [l["name"] for l in streamed[0]["layers"]] == [
        f"transformer.{n}" for n, _, _ in GPT2_LAYERS]
    assert load_file(caches / "streamed" / "model.safetensors")["transformer.wte.weight"].dtype == torch.bfloat16
    assert (streamed[1]["weights"].pop("loaded"), whole[1]["weights"].pop("loaded")) == ("tensor by tensor", "whole")
    assert streamed[1] == whole[1]


def test_no_two_checkpoint_tensors_are_in_memory_at_once(caches, monkeypatch, no_whole_model_loads):
    """Structural check of bounded memory: every tensor read from the checkpoint is gone (freed,
    not only out of scope) before the next one is read, through typing, hashing and writing."""
    import gc
    import weakref

    from zooscope import io

    folder = tiny_gpt2_folder(caches, max_shard_size="20KB")
    put_in_hf_cache(caches / "hf", "openai-community/gpt2", folder)
    alive, reads = [], []
    real_mapped = io.SafetensorsReader.mapped  # how the fetch reads a float32 tensor: a map of its bytes

    def mapped(self, key):
        gc.collect()
        reads.append((key, [ref for ref in alive if ref() is not None]))
        array = real_mapped(self, key)
        alive.append(weakref.ref(array))
        return array

    monkeypatch.setattr(io.SafetensorsReader, "mapped", mapped)
    fetch_model(hub_row("hf:openai-community/gpt2"), caches / "out", sheet_dir=caches)
    stored = len(folder_tensors(folder))
    # each analysed tensor: once to hash, once to write; the rest of the state (kept so that the
    # Jacobian stage can run the model): once, to write
    assert len(reads) == 2 * len(GPT2_LAYERS) + (stored - len(GPT2_LAYERS))
    assert all(not still_alive for _, still_alive in reads)


def test_a_hub_index_naming_a_shard_outside_the_repo_is_refused(caches):
    """A repo's index is untrusted: its shard names are downloaded, so they must be plain names."""
    folder = tiny_gpt2_folder(caches, max_shard_size="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["wte.weight"] = "../../../../escape.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    put_in_hf_cache(caches / "hf", "someone/gpt2", folder)
    with pytest.raises(FetchError, match=r"model 'm': shard index .* names an invalid shard file "
                                         r"'../../../../escape.safetensors'"):
        fetch_model(hub_row("hf:someone/gpt2", model="m"), caches / "out", sheet_dir=caches)
    assert not (caches / "out").exists()


def test_a_checkpoint_without_an_analysed_weight_is_loaded_whole(caches, caplog):
    """A BertForMaskedLM checkpoint whose config does not name its class: the tree is AutoModel's
    BertModel, whose pooler the checkpoint lacks; transformers initialises it itself, which only
    loading the model whole reproduces."""
    torch.manual_seed(0)
    transformers.BertForMaskedLM(tiny_bert_config()).save_pretrained(caches / "download")
    config = json.loads((caches / "download" / "config.json").read_text())
    assert config.pop("architectures") == ["BertForMaskedLM"]
    (caches / "download" / "config.json").write_text(json.dumps(config))
    put_in_hf_cache(caches / "hf", "someone/bert-mlm", caches / "download")
    fetch_model(hub_row("hf:someone/bert-mlm", model="mlm"), caches / "out", sheet_dir=caches)
    layers, meta = read_outputs(caches / "out")
    assert [l["name"] for l in layers["layers"]] == BERT_LAYERS and meta["weights"]["loaded"] == "whole"
    assert "model mlm: 1 analysed weights of BertModel are not in the checkpoint" in caplog.text
    assert "pooler.dense.weight" in caplog.text


@pytest.mark.parametrize("weights", [None, "model.safetensors"], ids=["config-only", "with-safetensors"])
def test_hf_remote_code_is_never_run(caches, weights):
    folder = caches / "download"
    folder.mkdir()
    marker = caches / "pwned"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"},
    }))
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    if weights:  # the tensor-by-tensor route reads the config first, too
        save_file({"fc.weight": torch.zeros(4, 4)}, folder / weights)
    put_in_hf_cache(caches / "hf", "someone/evil", folder)
    with pytest.raises(FetchError) as error:
        fetch_model(hub_row("hf:someone/evil", model="evil"), caches / "out", sheet_dir=caches)
    assert not marker.exists()
    assert "'evil'" in str(error.value) and "hf:someone/evil" in str(error.value)


def test_a_malicious_hugging_face_pickle_is_refused_and_never_runs(caches):
    """A repo without safetensors is loaded by transformers from pytorch_model.bin: a pickle."""
    folder = tiny_gpt2_folder(caches)
    (folder / "model.safetensors").unlink()
    marker = caches / "pwned"
    torch.save({"wte.weight": torch.zeros(100, 32), "payload": WritesFile(marker)}, folder / "pytorch_model.bin")
    put_in_hf_cache(caches / "hf", "someone/gpt2-pickle", folder)
    with pytest.raises(FetchError) as error:
        fetch_model(hub_row("hf:someone/gpt2-pickle", model="evil"), caches / "out", sheet_dir=caches)
    assert not marker.exists() and not (caches / "out").exists()
    assert str(error.value).startswith("model 'evil': ") and "hf:someone/gpt2-pickle" in str(error.value)
    assert "refusing" in str(error.value) and "references exec" in str(error.value)


# --------------------------------------------------------------------------- failures offline


@pytest.mark.parametrize("source, cache_words", [
    ("torchvision:resnet18@IMAGENET1K_V1", "hub/checkpoints/ (set by TORCH_HOME)"),
    ("timm:resnet18.a1_in1k", "hf download timm/resnet18.a1_in1k"),
    ("hf:openai-community/gpt2", "hf download openai-community/gpt2"),
], ids=["torchvision", "timm", "hf"])
def test_a_missing_download_fails_fast_with_the_fixes(caches, source, cache_words, waits):
    with pytest.raises(FetchError) as error:
        fetch_model(hub_row(source, model="unreachable"), caches / "out", sheet_dir=caches)
    assert sum(waits) < 1  # no retry loops
    message = str(error.value)
    assert message.startswith("model 'unreachable': cannot load source ")
    assert repr(source) in message and cache_words in message
    assert "file:PATH" in message and "save_pretrained" in message
    assert not (caches / "out").exists()


# --------------------------------------------------------------------------- sheets and schema


SOURCE_CASES = [
    ("torchvision:resnet50@IMAGENET1K_V1", True), ("torchvision:vgg11_bn", True),
    ("torchvision:resnet50@imagenet", False), ("torchvision:../x", False),
    ("timm:resnet50.a1_in1k", True), ("timm:resnet50", True), ("timm:hf-hub:x/y", False),
    ("hf:gpt2", True), ("hf:openai-community/gpt2-xl@main", True), ("hf:google-bert/bert-base-uncased@refs/pr/1", True),
    ("hf:gpt2@v1.0", True), ("hf:gpt2@main/../../../x", False), ("hf:gpt2@..", False), ("hf:gpt2@refs//pr", False),
    ("hf:a/b/c", False), ("hf:../etc", False), ("hf:a..b/c", False), ("hf:https://x.org/m", False), ("hf:", False),
]


@pytest.mark.parametrize("source, valid", SOURCE_CASES, ids=[case for case, _ in SOURCE_CASES])
def test_parse_source_and_the_schema_agree_on_hub_sources(source, valid):
    pattern = zoo_schema(load_schema(REPO / "schemas" / "zoo.schema.yaml"))["properties"]["source"]["pattern"]
    assert bool(re.search(pattern, source)) is valid
    if valid:
        kind, argument = parse_source(source)
        assert f"{kind}:{argument}" == source
    else:
        with pytest.raises(RowError, match=r"(invalid|unknown) source"):
            parse_source(source, model="m")


SHEETS = sorted((REPO / "zoos").glob("*.tsv"))


@pytest.mark.parametrize("sheet", SHEETS, ids=[path.name for path in SHEETS])
def test_every_shipped_sheet_is_valid(sheet):
    rows = read_zoo_sheet(sheet, load_schema(REPO / "schemas" / "zoo.schema.yaml"))  # parsed and checked
    assert len({row.model for row in rows}) == len(rows) > 0


def test_the_paper_imagenet_sheet():
    rows = read_zoo_sheet(REPO / "zoos" / "paper-imagenet.tsv", load_schema(REPO / "schemas" / "zoo.schema.yaml"))
    by_series = {}
    for row in rows:
        by_series.setdefault(row.series, []).append(row.source.text)
    assert by_series == {
        "VGG": [f"torchvision:vgg{d}{bn}@IMAGENET1K_V1" for d in (11, 13, 16, 19) for bn in ("", "_bn")],
        "ResNet": [f"torchvision:resnet{d}@IMAGENET1K_V1" for d in (18, 34, 50, 101, 152)],
        "DenseNet": [f"torchvision:densenet{d}@IMAGENET1K_V1" for d in (121, 161, 169, 201)],
    }
    # every pinned weights member exists and reports the top-1 the accuracy column is filled from,
    # checked for every model against an independent record: the Acc@1 of these weights in
    # torchvision's published table ("Table of all available classification weights",
    # pytorch.org/vision/stable/models.html), typed in here, not read from the installed package
    published_acc1 = {
        "vgg11": 69.020, "vgg13": 69.928, "vgg16": 71.592, "vgg19": 72.376,
        "vgg11_bn": 70.370, "vgg13_bn": 71.586, "vgg16_bn": 73.360, "vgg19_bn": 74.218,
        "resnet18": 69.758, "resnet34": 73.314, "resnet50": 76.130, "resnet101": 77.374, "resnet152": 78.312,
        "densenet121": 74.434, "densenet161": 77.138, "densenet169": 75.600, "densenet201": 76.896,
    }
    names = [row.source.argument.partition("@")[0] for row in rows]
    assert sorted(names) == sorted(published_acc1)  # no model of the sheet goes unchecked
    for row, name in zip(rows, names):
        weights = row.source.argument.partition("@")[2]
        acc1 = torchvision.models.get_model_weights(name)[weights].meta["_metrics"]["ImageNet-1K"]["acc@1"]
        assert acc1 == pytest.approx(published_acc1[name], abs=5e-4), name


def test_keep_going_completes_the_other_models_when_a_download_is_impossible(caches):
    """The real workflow, offline with empty caches: the hub models fail alone (as failure records),
    the file model completes."""
    import subprocess
    import sys

    workdir = caches / "run"
    workdir.mkdir()
    torch.manual_seed(0)
    save_file({"fc.weight": torch.randn(60, 50)}, workdir / "local.safetensors")
    (workdir / "zoo.tsv").write_text(
        "model\tseries\tsource\taccuracy\n"
        "local\ts\tfile:local.safetensors\t70\n"
        "gpt\ts\thf:openai-community/gpt2\t\n"
        "vgg\ts\ttorchvision:vgg11@IMAGENET1K_V1\t\n"
    )
    (workdir / "config.yaml").write_text("zoo: zoo.tsv\n")
    targets = [f"results/metrics/{model}/summary.json" for model in ("local", "gpt", "vgg")]
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
         "--cores", "2", "--keep-going", *targets],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode != 0
    assert (workdir / "results" / "metrics" / "local" / "summary.json").is_file()  # fetched, esd, fit, summarized
    assert json.loads((workdir / "resources" / "models" / "local" / "meta.json").read_text())["accuracy"] == 70
    for model, source in (("gpt", "hf:openai-community/gpt2"), ("vgg", "torchvision:vgg11@IMAGENET1K_V1")):
        folder = workdir / "resources" / "models" / model
        # no partial file, no temporary one: the failure record (docs/failures.md) and its counter
        assert sorted(path.name for path in folder.iterdir()) == [
            ".meta.json.failures", "layers.json", "meta.json", "model.safetensors", "tensors.json"]
        failed = json.loads((folder / "meta.json").read_text())["failed"]
        assert failed["stage"] == "fetch" and f"model '{model}': cannot load source '{source}'" in failed["reason"]
        log = (workdir / "logs" / "fetch" / f"{model}.log").read_text()
        assert f"model '{model}': cannot load source '{source}'" in log and "file:PATH" in log


@pytest.mark.parametrize("source", ["torchvision:resnet18@IMAGENET1K_V1", "timm:resnet18.a1_in1k",
                                    "hf:openai-community/gpt2"], ids=["torchvision", "timm", "hf"])
def test_no_network_without_offline_mode_fails_fast_too(caches, monkeypatch, source, waits):
    """HF_HUB_OFFLINE unset, but no name resolves (as on a machine without network)."""
    import socket

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (no network in this test)")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(FetchError) as error:
        fetch_model(hub_row(source, model="no-net"), caches / "out", sheet_dir=caches)
    assert sum(waits) < 1  # huggingface_hub's backoff would sleep 1, 2, 4... s between retries
    message = str(error.value)
    assert message.startswith(f"model 'no-net': cannot load source {source!r}: ") and "file:PATH" in message


def test_the_language_model_and_timm_sheets():
    """The series the issue names: OpenAI GPT and the four GPT-2 sizes, BERT, one timm series."""
    schema = load_schema(REPO / "schemas" / "zoo.schema.yaml")
    sources = {name: [(row.series, row.source.text) for row in read_zoo_sheet(REPO / "zoos" / name, schema)]
               for name in ("gpt.tsv", "bert.tsv", "timm-resnet.tsv")}
    assert sources["gpt.tsv"] == [("GPT", "hf:openai-community/openai-gpt")] + [
        ("GPT2", f"hf:openai-community/gpt2{size}") for size in ("", "-medium", "-large", "-xl")]
    assert sources["bert.tsv"] == [("BERT", f"hf:google-bert/bert-{size}-{case}")
                                   for size in ("base", "large") for case in ("uncased", "cased")]
    assert sources["timm-resnet.tsv"] == [("ResNet-A1", f"timm:resnet{depth}.a1_in1k")
                                          for depth in (18, 34, 50, 101, 152)]
    for series_sources in sources["timm-resnet.tsv"]:  # every tag exists in the installed timm
        assert series_sources[1].removeprefix("timm:") in timm.list_pretrained("resnet*")


# --------------------------------------------------------------------------- local Hugging Face folders


def tiny_llama_folder(root: Path, tie: bool = False) -> Path:
    """A Llama-architecture causal LM saved by save_pretrained in bf16 shards (issue 14's case)."""
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=tie)
    torch.manual_seed(0)
    folder = root / "llama"
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder, max_shard_size="20KB")
    return folder


# Its depth order by hand: the embedding, each block's attention (q, k, v, o) before its MLP
# (gate, up, down), the head last.
LLAMA_LAYERS = ["model.embed_tokens"] + [
    f"model.layers.{i}.{name}" for i in range(3) for name in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
] + ["lm_head"]


def test_a_local_hugging_face_folder_is_typed_like_the_hub(caches, no_whole_model_loads):
    """file:FOLDER and hf:REPO fed the same save_pretrained files give the same layer list, types,
    depth order and bytes (issue 14, item 2), kept in bf16 (item 3)."""
    folder = tiny_llama_folder(caches)
    assert len(list(folder.glob("*.safetensors"))) > 2
    put_in_hf_cache(caches / "hf", "someone/tiny-llama", folder)
    fetch_model({**hub_row("file:llama", model="local")}, caches / "local", sheet_dir=caches)
    fetch_model(hub_row("hf:someone/tiny-llama"), caches / "hub", sheet_dir=caches)
    (local, local_meta), (hub, hub_meta) = read_outputs(caches / "local"), read_outputs(caches / "hub")
    assert [l["name"] for l in local["layers"]] == LLAMA_LAYERS
    assert [l["type"] for l in local["layers"]] == ["Embedding"] + ["Linear"] * (len(LLAMA_LAYERS) - 1)
    assert local["layers"] == hub["layers"]  # names, types, shapes, depths, hashes
    assert (caches / "local" / "model.safetensors").read_bytes() == (caches / "hub" / "model.safetensors").read_bytes()
    assert local_meta["layer_typing"] == "module tree of transformers LlamaForCausalLM (config.json)"
    assert hub_meta["weights"]["class"] == "LlamaForCausalLM"
    assert {t.dtype for t in load_file(caches / "local" / "model.safetensors").values()} == {torch.bfloat16}
    tensors = json.loads((caches / "local" / "tensors.json").read_text())["tensors"]
    reasons = {t["tensor"]: t["reason"] for t in tensors}
    original = folder_tensors(folder)
    assert reasons.keys() == original.keys()
    assert {key for key, reason in reasons.items() if reason == "norm"} == {
        key for key in original if key.endswith("norm.weight")}
    assert json.loads((caches / "hub" / "tensors.json").read_text())["tensors"] == tensors


def test_a_tied_head_is_one_layer(caches):
    folder = tiny_llama_folder(caches, tie=True)
    fetch_model(hub_row("file:llama", model="tied"), caches / "out", sheet_dir=caches)
    layers, _ = read_outputs(caches / "out")
    assert [l["name"] for l in layers["layers"]] == LLAMA_LAYERS[:-1]  # lm_head is embed_tokens
    assert "lm_head.weight" not in folder_tensors(folder)


def test_the_experts_of_a_mixture_of_experts_checkpoint_are_layers(caches, no_whole_model_loads):
    """A Mixtral checkpoint (as save_pretrained writes it and the hub holds it: each expert's w1, w2,
    w3 and each block's router a matrix) typed by a transformers tree that fuses the experts into
    3-D parameters: every weight matrix of the files is a layer, the experts after their block's
    attention, for file: and hf: alike, without loading the model."""
    torch.manual_seed(0)
    config = transformers.MixtralConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=3,
                                        num_experts_per_tok=2, max_position_embeddings=64)
    folder = caches / "mixtral"
    transformers.MixtralForCausalLM(config).to(torch.bfloat16).save_pretrained(folder, max_shard_size="20KB")
    files = folder_tensors(folder)
    matrices = sorted(key for key, value in files.items() if value.ndim == 2)
    assert "model.layers.1.block_sparse_moe.experts.2.w3.weight" in matrices, "not the per-expert layout of the hub"
    put_in_hf_cache(caches / "hf", "someone/tiny-mixtral", folder)
    fetch_model(hub_row("file:mixtral", model="local"), caches / "local", sheet_dir=caches)
    fetch_model(hub_row("hf:someone/tiny-mixtral"), caches / "hub", sheet_dir=caches)
    (local, meta), (hub, _) = read_outputs(caches / "local"), read_outputs(caches / "hub")
    assert local["layers"] == hub["layers"]
    assert (caches / "local" / "model.safetensors").read_bytes() == (caches / "hub" / "model.safetensors").read_bytes()
    names = [layer["name"] for layer in local["layers"]]
    assert sorted(layer["tensor"] for layer in local["layers"]) == matrices
    assert {layer["name"]: layer["type"] for layer in local["layers"]} == {
        key.removesuffix(".weight"): "Embedding" if "embed" in key else "Linear" for key in matrices}
    for layer in local["layers"]:
        widened = files[layer["tensor"]].float().numpy()
        assert layer["shape"] == list(widened.shape)
        assert layer["sha256"] == hashlib.sha256(widened.tobytes()).hexdigest()
    block = [re.match(r"model\.layers\.(\d+)\.(\w+)", name) for name in names]
    blocks = [int(match[1]) if match else None for match in block]
    assert names[0] == "model.embed_tokens" and names[-1] == "lm_head"
    assert blocks[1:-1] == sorted(blocks[1:-1])  # block by block
    for i in range(config.num_hidden_layers):
        parts = [match[2] for match, b in zip(block, blocks) if b == i]
        assert parts == ["self_attn"] * 4 + ["block_sparse_moe"] * (3 * 3 + 1)  # attention, then the MoE
    reasons = {t["tensor"]: t["reason"] for t in json.loads((caches / "local" / "tensors.json").read_text())["tensors"]}
    assert not {key for key in matrices if reasons[key]}
    moe = [key for key in matrices if ".block_sparse_moe." in key]  # experts and routers: 2 x (3 x 3 + 1)
    assert meta["layer_typing"] == (f"module tree of transformers MixtralForCausalLM (config.json), and {len(moe)} "
                                    "weights it has no parameter for by tensor names and ranks")


def test_a_tied_weight_kept_under_each_of_its_names_is_one_layer(caches):
    """A T5 PyTorch file (torch.save of its state dict) keeps the shared embedding under all four of
    its names (shared, encoder and decoder embed_tokens, the tied head): one layer, the others tied
    to it, not weights the tree has no parameter for."""
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    network = transformers.T5ForConditionalGeneration(config)
    folder = caches / "t5"
    network.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    state = network.state_dict()
    copies = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"]
    assert all(state[key].data_ptr() == state["shared.weight"].data_ptr() for key in copies)
    torch.save(state, folder / "pytorch_model.bin")
    fetch_model(hub_row("file:t5", model="t5"), caches / "out", sheet_dir=caches)
    layers, meta = read_outputs(caches / "out")
    names = [layer["name"] for layer in layers["layers"]]
    assert "shared" in names and not {key.removesuffix(".weight") for key in copies} & set(names)
    assert meta["layer_typing"] == "module tree of transformers T5ForConditionalGeneration (config.json)"
    records = {t["tensor"]: t for t in json.loads((caches / "out" / "tensors.json").read_text())["tensors"]}
    assert [(records[key]["reason"], records[key]["detail"]) for key in copies] == [("tied", "tied to shared.weight")] * 3


def fused_moe(architecture: str):
    """A mixture-of-experts model whose checkpoint keeps each block's experts fused as 3-D tensors,
    experts first, as its save_pretrained writes them: gpt-oss (``mlp.experts.gate_up_proj``, no
    ``.weight``) or Granite-MoE (``block_sparse_moe.input_linear.weight``)."""
    common = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, num_local_experts=3, num_experts_per_tok=2)
    if architecture == "gpt-oss":
        config = transformers.GptOssConfig(**common, head_dim=8, layer_types=["full_attention"] * 2)
        return transformers.GptOssForCausalLM(config), ("experts.gate_up_proj", "experts.down_proj")
    config = transformers.GraniteMoeConfig(**common)
    return transformers.GraniteMoeForCausalLM(config), ("input_linear.weight", "output_linear.weight")


@pytest.mark.parametrize("architecture", ["gpt-oss", "granite-moe"])
@pytest.mark.parametrize("with_config", [True, False], ids=["config", "bare"])
def test_experts_stored_fused_are_one_layer_each_and_stored_once(caches, no_whole_model_loads, architecture,
                                                                  with_config):
    """Experts kept fused in the checkpoint (3-D tensors, experts first): each expert's matrix is a
    Linear layer read from the checkpoint (not a Conv1d: Granite-MoE's end in ``weight``), the
    router too, typed by the module tree with a config.json (file: and hf: alike) and by their
    names without one; the model cache holds every byte of the checkpoint once."""
    torch.manual_seed(0)
    network, suffixes = fused_moe(architecture)
    folder = caches / architecture
    network.to(torch.bfloat16).save_pretrained(folder, max_shard_size="20KB")
    files = folder_tensors(folder)
    fused = sorted(key for key, value in files.items() if value.ndim == 3)
    assert fused and all(key.endswith(suffixes) for key in fused)
    if with_config:
        put_in_hf_cache(caches / "hf", "someone/tiny-moe", folder)
        fetch_model(hub_row("hf:someone/tiny-moe"), caches / "hub", sheet_dir=caches)
    else:
        (folder / "config.json").unlink()
    fetch_model(hub_row(f"file:{architecture}", model="local"), caches / "local", sheet_dir=caches)
    local, meta = read_outputs(caches / "local")
    assert meta["layer_typing"].startswith("module tree" if with_config else "tensor names and ranks")
    if with_config:
        assert local["layers"] == read_outputs(caches / "hub")[0]["layers"]
    by_name = {layer["name"]: layer for layer in local["layers"]}
    for key in fused:
        for e in range(3):
            layer = by_name.pop(f"{key.removesuffix('.weight')}.{e}")
            widened = files[key][e].float().numpy()
            assert layer["type"] == "Linear" and layer["shape"] == list(widened.shape)
            assert layer["sha256"] == hashlib.sha256(widened.tobytes()).hexdigest()
    matrices = {key.removesuffix(".weight") for key, value in files.items() if value.ndim == 2 and key.endswith("weight")}
    assert set(by_name) == matrices  # the rest: attention, routers, embedding, head
    cached = load_file(caches / "local" / "model.safetensors")
    assert not set(fused) & cached.keys()
    if with_config:  # the rest of the state is kept for the Jacobian stage, once
        assert sum(v.numel() * v.element_size() for v in cached.values()) == \
            sum(v.numel() * v.element_size() for v in files.values())
    records = {t["tensor"]: t for t in json.loads((caches / "local" / "tensors.json").read_text())["tensors"]}
    for key in fused:
        path = key.removesuffix(".weight")
        assert records[key]["reason"] == "" and records[key]["layer"] == ",".join(f"{path}.{e}" for e in range(3))


def test_experts_stored_as_row_blocks_of_one_matrix_are_one_layer_each(caches, no_whole_model_loads):
    """DBRX keeps each projection of a block's experts as one (experts x intermediate, hidden)
    matrix: each expert's rows are a Linear layer, split by the expert count of its module."""
    torch.manual_seed(0)
    config = transformers.DbrxConfig(d_model=32, n_heads=4, n_layers=1, max_seq_len=16, vocab_size=96,
                                     attn_config={"kv_n_heads": 2, "rope_theta": 10000.0},
                                     ffn_config={"ffn_hidden_size": 24, "moe_num_experts": 3})
    transformers.DbrxForCausalLM(config).save_pretrained(caches / "dbrx")
    files = folder_tensors(caches / "dbrx")
    fetch_model(hub_row("file:dbrx", model="dbrx"), caches / "out", sheet_dir=caches)
    layers, _ = read_outputs(caches / "out")
    by_name = {layer["name"]: layer for layer in layers["layers"]}
    for projection in ("w1", "v1", "w2"):
        key = f"transformer.blocks.0.ffn.experts.mlp.{projection}"
        assert files[key].shape == (3 * 24, 32)
        for e in range(3):
            layer = by_name.pop(f"{key}.{e}")
            rows = files[key][24 * e:24 * (e + 1)].float().numpy()
            assert layer["type"] == "Linear" and layer["sha256"] == hashlib.sha256(rows.tobytes()).hexdigest()
    assert set(by_name) == {key.removesuffix(".weight") for key, value in files.items()
                            if value.ndim == 2 and key.endswith("weight")}  # attention, router, embedding, head
    reasons = {t["tensor"]: t["reason"] for t in json.loads((caches / "out" / "tensors.json").read_text())["tensors"]}
    assert "not a layer weight" not in reasons.values()


@pytest.mark.parametrize("names", ["parametrizations", "weight_g", "no-config"])
def test_a_weight_norm_convolution_is_its_computed_weight(caches, names):
    """HuBERT's (and wav2vec2's, WavLM's) positional convolution is weight-normed: the checkpoint
    holds its direction v and magnitude g (``parametrizations.weight.original1``/``original0``, as
    transformers 5 saves them, or ``weight_v``/``weight_g`` in older files, which transformers
    renames on load). The folder is typed by its module tree and the layer is the weight the
    module computes, g v / ||v||, not v."""
    from safetensors.torch import load_file

    torch.manual_seed(0)
    config = transformers.HubertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                       intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                                       num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    network = transformers.HubertModel(config).eval()
    conv = network.encoder.pos_conv_embed.conv
    with torch.no_grad():  # a magnitude of its own, as after training (at initialisation g = ||v||)
        conv.parametrizations.weight.original0.mul_(torch.rand_like(conv.parametrizations.weight.original0) + 0.5)
    folder = caches / "hubert"
    network.save_pretrained(folder)
    if names == "weight_g":
        stored = load_file(folder / "model.safetensors")
        old = {key.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): value for key, value in stored.items()}
        assert len(old) == len(stored) and any(key.endswith("weight_g") for key in old)
        save_file(old, folder / "model.safetensors", metadata={"format": "pt"})
    if names == "no-config":  # typed by name: the pair is still the weight it makes
        (folder / "config.json").unlink()
    fetch_model(hub_row("file:hubert", model="hubert"), caches / "out", sheet_dir=caches)
    layers, meta = read_outputs(caches / "out")
    assert meta["layer_typing"].startswith("tensor names" if names == "no-config" else
                                           "module tree of transformers HubertModel (config.json)")
    layer = next(l for l in layers["layers"] if l["name"] == "encoder.pos_conv_embed.conv")
    computed = conv.weight.detach()
    assert not torch.allclose(computed, conv.parametrizations.weight.original1)
    assert layer["type"] == "Conv1d" and layer["shape"] == list(computed.shape)
    assert layer["sha256"] == hashlib.sha256(computed.numpy().tobytes()).hexdigest()
    modules = {name for name, module in network.named_modules() if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d))}
    assert {l["name"] for l in layers["layers"]} == modules
    reasons = {t["tensor"]: t["reason"] for t in json.loads((caches / "out" / "tensors.json").read_text())["tensors"]}
    magnitude = next(key for key in reasons if key.endswith(("weight_g", "original0")))
    assert reasons[magnitude] == "norm" and "not a layer weight" not in reasons.values()


def test_layers_of_classes_outside_torch_nn_are_typed_by_their_class_names(caches):
    """I-BERT keeps its float weights in QuantLinear and QuantEmbedding modules of its own (not
    subclasses of torch.nn's): they are Linear and Embedding layers, as WeightWatcher has them."""
    torch.manual_seed(0)
    config = transformers.IBertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                      intermediate_size=64)
    network = transformers.IBertModel(config)
    network.save_pretrained(caches / "ibert")
    expected = {name: {"QuantLinear": "Linear", "QuantEmbedding": "Embedding", "Linear": "Linear"}[type(module).__name__]
                for name, module in network.named_modules()
                if type(module).__name__ in ("QuantLinear", "QuantEmbedding", "Linear")}
    assert sum(kind == "Linear" for kind in expected.values()) == 7  # q, k, v, output, MLP in and out; the pooler
    fetch_model(hub_row("file:ibert", model="ibert"), caches / "out", sheet_dir=caches)
    layers, meta = read_outputs(caches / "out")
    assert meta["layer_typing"] == "module tree of transformers IBertModel (config.json)"
    assert {layer["name"]: layer["type"] for layer in layers["layers"]} == expected
    files = folder_tensors(caches / "ibert")
    for layer in layers["layers"]:
        assert layer["sha256"] == hashlib.sha256(files[layer["tensor"]].float().numpy().tobytes()).hexdigest()


def test_a_3d_weight_outside_a_mixture_of_experts_is_a_conv1d(tmp_path):
    """Only a name naming experts makes a bare 3-D weight stacked experts: a Conv1d's stays one layer."""
    network = torch.nn.ModuleDict({"conv": torch.nn.Conv1d(4, 6, 3), "experts": torch.nn.ParameterDict(
        {"up": torch.nn.Parameter(torch.randn(2, 5, 4))})})
    save_file({key: value.detach().contiguous() for key, value in network.state_dict().items()}, tmp_path / "m.safetensors")
    fetch_model(hub_row(f"file:{tmp_path / 'm.safetensors'}", model="m"), tmp_path / "out", sheet_dir=tmp_path)
    layers, _ = read_outputs(tmp_path / "out")
    assert [(l["name"], l["type"], l["shape"]) for l in layers["layers"]] == [
        ("conv", "Conv1d", [6, 4, 3]), ("experts.up.0", "Linear", [5, 4]), ("experts.up.1", "Linear", [5, 4])]


@pytest.mark.parametrize("config", ["none", "remote-code", "unknown-type"])
def test_without_a_usable_config_the_folder_is_typed_by_name(caches, config):
    folder = tiny_llama_folder(caches)
    if config == "none":
        (folder / "config.json").unlink()
    else:
        content = json.loads((folder / "config.json").read_text())
        if config == "remote-code":
            content.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.Evil"})
            (folder / "evil.py").write_text(f"open({str(caches / 'pwned')!r}, 'w').write('ran')\n")
        else:
            content["model_type"] = "no-such-model-type"
        (folder / "config.json").write_text(json.dumps(content))
    fetch_model(hub_row("file:llama", model="by-name"), caches / "out", sheet_dir=caches)
    layers, meta = read_outputs(caches / "out")
    assert meta["layer_typing"].startswith("tensor names and ranks (")
    assert ("no config.json" in meta["layer_typing"]) == (config == "none")
    assert {l["name"] for l in layers["layers"]} == set(LLAMA_LAYERS)  # the same weights, in name order
    assert [l["name"] for l in layers["layers"]][:2] == ["lm_head", "model.embed_tokens"]
    assert not (caches / "pwned").exists()


# --------------------------------------------------------------------------- rebuilt for the Jacobian stage


def rebuilt(out: Path):
    """The fetched model run again from resources/ alone (zooscope.jacobian.rebuild)."""
    from zooscope.jacobian.rebuild import rebuild_module

    layers, meta = read_outputs(out)
    return rebuild_module(meta, layers["layers"], out / "model.safetensors"), meta


def built_again(out: Path, kind: str):
    """A language model's module built again from resources/ alone, as rebuild_module builds it
    (the Jacobian stage itself refuses language models: test_a_language_model_is_refused...)."""
    from zooscope.jacobian.rebuild import check_weights, module_state
    from zooscope.sources.registry import KINDS

    layers, meta = read_outputs(out)
    network = KINDS[kind].rebuild(meta)
    network.load_state_dict(module_state(network, load_file(out / "model.safetensors")), strict=False)
    check_weights(meta["model"], network, layers["layers"])
    return network, meta


def same_state(network, state: dict) -> None:
    """The rebuilt module's state is the original's (float32 widening of a bf16 original)."""
    got = network.state_dict()
    for key, value in state.items():
        assert torch.equal(got[key], value.to(got[key].dtype)), key


def test_hub_models_are_rebuilt_from_their_fetched_files_without_a_second_download(caches):
    """torchvision, timm and hf: models are rebuilt from resources/ with the caches deleted
    (issue 14, item 8), their state the original one, and run on a user's .npz of images."""
    from zooscope.config import JacobianSettings
    from zooscope.jacobian.compute import model_jacobian
    from zooscope.jacobian.data import load_samples
    from zooscope.zoo import data_spec

    vision = put_torchvision_checkpoint(caches)
    fetch_model(hub_row("torchvision:resnet18@IMAGENET1K_V1", model="tv"), caches / "tv", sheet_dir=caches)
    torch.manual_seed(1)
    timm_state = timm.create_model("resnet18", pretrained=False).state_dict()
    (caches / "download").mkdir()
    save_file(timm_state, caches / "download" / "model.safetensors")
    put_in_hf_cache(caches / "hf", "timm/resnet18.a1_in1k", caches / "download")
    fetch_model(hub_row("timm:resnet18.a1_in1k", model="tm"), caches / "tm", sheet_dir=caches)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16)
    torch.manual_seed(2)
    transformers.GPT2LMHeadModel(config).save_pretrained(caches / "gpt2", max_shard_size="20KB")
    gpt2_state = folder_tensors(caches / "gpt2")
    put_in_hf_cache(caches / "hf", "openai-community/gpt2", caches / "gpt2")
    fetch_model(hub_row("hf:openai-community/gpt2", model="lm"), caches / "lm", sheet_dir=caches)
    shutil.rmtree(caches / "torch")
    shutil.rmtree(caches / "hf")

    network, meta = rebuilt(caches / "tv")
    assert meta["architecture"] == {"library": "torchvision", "name": "resnet18"}
    same_state(network, vision)
    network, meta = rebuilt(caches / "tm")
    assert meta["architecture"] == {"library": "timm", "name": "resnet18.a1_in1k"}
    same_state(network, timm_state)
    network, meta = built_again(caches / "lm", "hf")
    assert meta["architecture"]["class"] == "GPT2LMHeadModel"
    same_state(network, gpt2_state)  # Conv1D weights transposed back, lm_head tied to wte again
    assert network.lm_head.weight is network.transformer.wte.weight

    rng = np.random.default_rng(0)
    np.savez(caches / "images.npz", x=rng.random((6, 3, 16, 16), dtype=np.float32), y=rng.integers(0, 1000, 6))
    samples = load_samples(data_spec("images.npz", caches, samples=6))
    network, _ = rebuilt(caches / "tv")
    original = torchvision.models.resnet18(weights=None)
    original.load_state_dict(vision)
    with torch.no_grad():
        assert torch.equal(network(samples.x), original.eval()(samples.x))
    result = model_jacobian(network, samples.x, samples.y, JacobianSettings(batch_size=3, hessian_probes=0,
                                                                            input_output=False), min_evals=2)
    assert result.passes > 0 and len(result.layers) > 0


def test_a_local_folder_is_rebuilt_like_the_hub(caches):
    folder = tiny_llama_folder(caches)
    original = folder_tensors(folder)
    fetch_model(hub_row("file:llama", model="local"), caches / "local", sheet_dir=caches)
    network, meta = built_again(caches / "local", "file")
    assert type(network).__name__ == "LlamaForCausalLM" and meta["architecture"]["library"] == "transformers"
    same_state(network, original)
    stored = load_file(caches / "local" / "model.safetensors")
    assert stored.keys() == original.keys()  # the whole state, once, in bf16: no more than the checkpoint
    assert all(value.dtype == torch.bfloat16 for value in stored.values())


def test_a_bare_weights_file_is_not_rebuilt(caches):
    from zooscope.jacobian.rebuild import RebuildError

    folder = tiny_llama_folder(caches)
    (folder / "config.json").unlink()
    fetch_model(hub_row("file:llama", model="bare"), caches / "bare", sheet_dir=caches)
    with pytest.raises(RebuildError, match="a file: model cannot be run from its fetched files unless it is a model "
                                           r"folder with a config.json .*\(this one: tensor names and ranks"):
        rebuilt(caches / "bare")


def test_a_transformers_image_classifier_runs_the_jacobian_stage(caches):
    from zooscope.config import JacobianSettings
    from zooscope.jacobian.compute import model_jacobian
    from zooscope.jacobian.data import load_samples
    from zooscope.zoo import data_spec

    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)
    torch.manual_seed(0)
    original = transformers.ResNetForImageClassification(config).eval()
    original.save_pretrained(caches / "classifier")
    assert parse_row({**hub_row("file:classifier"), "data": "images.npz"}, caches).data.name == "images.npz"
    fetch_model(hub_row("file:classifier", model="resnet"), caches / "classifier-out", sheet_dir=caches)
    network, _ = rebuilt(caches / "classifier-out")
    rng = np.random.default_rng(0)
    np.savez(caches / "images.npz", x=rng.random((4, 3, 16, 16), dtype=np.float32), y=rng.integers(0, 5, 4))
    samples = load_samples(data_spec("images.npz", caches, samples=4))
    with torch.no_grad():
        assert torch.equal(network(samples.x), original(pixel_values=samples.x).logits)
    assert [name for name, _ in network.named_parameters()] == [name for name, _ in original.named_parameters()]
    result = model_jacobian(network, samples.x, samples.y, JacobianSettings(batch_size=2, hessian_probes=0,
                                                                            input_output=False), min_evals=2)
    assert result.passes > 0 and len(result.layers) > 0


def test_a_checkpoint_under_names_transformers_renames_on_load_is_typed_by_its_tree(caches, no_whole_model_loads):
    """transformers 5 saves a ViT under the names of its old modules (encoder.layer.0.attention.
    attention.query; the module is layers.0.attention.q_proj) and renames them on load: the tree
    types the checkpoint through the same renamings, for file: and hf: alike, without loading it
    whole, and the fetched model runs again, giving the original's logits."""
    config = transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    original = transformers.ViTForImageClassification(config).eval()
    original.save_pretrained(caches / "vit")
    saved = load_file(caches / "vit" / "model.safetensors")
    assert "vit.encoder.layer.0.attention.attention.query.weight" in saved, "not the old names"
    put_in_hf_cache(caches / "hf", "someone/tiny-vit", caches / "vit")
    fetch_model(hub_row("file:vit", model="local"), caches / "local", sheet_dir=caches)
    fetch_model(hub_row("hf:someone/tiny-vit"), caches / "hub", sheet_dir=caches)
    (local, meta), (hub, _) = read_outputs(caches / "local"), read_outputs(caches / "hub")
    assert meta["layer_typing"] == "module tree of transformers ViTForImageClassification (config.json)"
    assert local["layers"] == hub["layers"]
    analysed = {name for name, m in original.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    assert {layer["name"] for layer in local["layers"]} == analysed  # the module's names
    network, _ = rebuilt(caches / "local")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(network(x), original(pixel_values=x).logits)


def test_a_language_model_is_refused_by_the_jacobian_stage(caches):
    from zooscope.jacobian.rebuild import RebuildError

    tiny_llama_folder(caches)
    fetch_model(hub_row("file:llama", model="lm"), caches / "lm", sheet_dir=caches)
    with pytest.raises(RebuildError, match="model 'lm': .*LlamaForCausalLM is not a transformers image classifier"):
        rebuilt(caches / "lm")
    # ...and a file: folder of it with data is refused when the sheet is read, from its
    # save_pretrained config.json, before any job (issue 14, item 8).
    with pytest.raises(RowError, match="model 'lm': column 'data' .* not file:llama; leave the cell empty"):
        parse_row({**hub_row("file:llama", model="lm"), "data": "tokens.npz"}, caches)
