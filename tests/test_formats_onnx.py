"""ONNX files (zooscope.sources.formats.onnx): models exported by torch.onnx.export and graphs
built with onnx.helper, fetched as file: rows; matrices checked against the torch weights."""
import warnings

import numpy as np
import pytest

from conftest import fetch_file_source
from zooscope.sources import formats
from zooscope.sources.base import FetchError

import onnx
import torch
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


class Net(torch.nn.Module):
    """Conv2d, ConvTranspose2d, a Conv1d, a LayerNorm, a Linear used twice (tied), a Linear
    without bias (exported as MatMul with the transposed weight) and a Linear with bias (Gemm)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3)
        self.up = torch.nn.ConvTranspose2d(6, 4, 3)
        self.temporal = torch.nn.Conv1d(4, 5, 2)
        self.norm = torch.nn.LayerNorm(7)
        self.shared = torch.nn.Linear(7, 7)
        self.proj = torch.nn.Linear(7, 9, bias=False)
        self.head = torch.nn.Linear(9, 2)

    def forward(self, x):
        y = self.up(self.conv(x))  # (b, 4, 8, 8)
        z = self.temporal(y.mean(dim=2))  # (b, 5, 7)
        z = self.shared(self.shared(self.norm(z)))
        return self.head(self.proj(z))


def export(module, path, example):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, (example,), str(path), dynamo=False)


def test_a_torch_export_gives_the_modules_weights_in_graph_order(tmp_path):
    torch.manual_seed(0)
    net = Net().eval()
    export(net, tmp_path / "net.onnx", torch.randn(1, 3, 8, 8))
    assert formats.detect(tmp_path / "net.onnx") == "onnx"
    layers, matrices, meta = fetch_file_source(tmp_path / "net.onnx", tmp_path / "out")

    assert [(l["name"], l["type"]) for l in layers] == [
        ("conv", "Conv2d"), ("up", "Conv2d"), ("temporal", "Conv1d"), ("shared", "Linear"),
        ("proj", "Linear"), ("head", "Linear")]
    expected = {
        "conv": net.conv.weight, "up": net.up.weight.transpose(0, 1), "temporal": net.temporal.weight,
        "shared": net.shared.weight, "proj": net.proj.weight, "head": net.head.weight}
    for name, weight in expected.items():
        np.testing.assert_array_equal(matrices[name], weight.detach().numpy(), err_msg=name)

    tensors = meta["stored_tensors"]
    assert meta["file_format"] == "onnx" and meta["file_format_info"]["producer"].startswith("pytorch")
    reasons = {name: entry.get("reason") for name, entry in tensors.items()}
    assert reasons["conv.bias"] == reasons["head.bias"] == "bias"
    assert reasons["norm.weight"] == reasons["norm.bias"] == "norm"
    assert tensors["up.weight"] == {"dtype": "FLOAT", "shape": [6, 4, 3, 3], "layer": "up"}
    # the Linear applied twice is one initializer consumed by two Gemm nodes: analysed once
    assert sum(entry.get("layer") == "shared" for entry in tensors.values()) == 1
    assert meta["num_params"] == sum(p.numel() for p in net.parameters())


def test_weights_the_exporter_renamed_are_named_after_their_modules(tmp_path):
    """torch's exporter folds a BatchNorm into its Conv and transposes a bias-free Linear into a
    MatMul, under made-up initializer names (onnx::Conv_12); those layers take their node's module
    path, which must be the module's own name in nested containers (blocks.1.proj), as in
    named_modules."""
    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8, bias=False)

        def forward(self, x):
            return self.proj(x)

    net = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Sequential(*[torch.nn.ModuleList([Block()])[0] for _ in range(2)]),
    ).eval()
    export(net, tmp_path / "nested.onnx", torch.randn(1, 3, 8, 8))
    layers, _, meta = fetch_file_source(tmp_path / "nested.onnx", tmp_path / "out")
    assert all("::" in name for name in meta["stored_tensors"] if not name.endswith("bias"))  # all made up
    assert [l["name"] for l in layers] == ["0.0", "3.0.proj", "3.1.proj"]
    assert {l["name"] for l in layers} <= dict(net.named_modules()).keys()


def test_torchs_dynamo_export_gives_the_modules_names_and_matrices(tmp_path):
    """torch's dynamo exporter (its default from torch 2.9) folds each Linear's transposed weight into
    a new initializer (``val_12``) for a MatMul; such layers take the module scope the exporter
    records on the node (``blocks.1.proj``, as in named_modules), and their matrices are the
    Linears' weights."""
    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.proj = torch.nn.LayerNorm(8), torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.proj(self.norm(x))

    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Sequential(Block(), Block()),
                              torch.nn.Linear(8, 4, bias=False)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tokens (batch, 5, 6): each Linear a MatMul
        torch.onnx.export(net, (torch.randn(2, 5, 6),), str(tmp_path / "dynamo.onnx"), dynamo=True, verbose=False)
    stored = {t.name for t in onnx.load(str(tmp_path / "dynamo.onnx"), load_external_data=False).graph.initializer}
    assert "1.0.proj.weight" not in stored and any(name.startswith("val_") for name in stored)  # folded, renamed
    layers, matrices, _ = fetch_file_source(tmp_path / "dynamo.onnx", tmp_path / "out")
    modules = dict(net.named_modules())
    assert [l["name"] for l in layers] == ["0", "1.0.proj", "1.1.proj", "2"]
    for layer in layers:
        np.testing.assert_array_equal(matrices[layer["name"]], modules[layer["name"]].weight.detach().numpy())


def gemm_graph(weights: dict, nodes: list, inputs=("x",)):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in inputs],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(value, name) for name, value in weights.items()])
    return helper.make_model(graph, producer_name="test", opset_imports=[helper.make_opsetid("", 17)])


def test_gemm_and_matmul_are_oriented_by_their_attributes(tmp_path, rng):
    w_plain = rng.standard_normal((5, 7)).astype(np.float32)  # Gemm B (in, out), transB=0
    w_left = rng.standard_normal((4, 5)).astype(np.float32)  # MatMul A: Y = W X, (out, in)
    w_transA = rng.standard_normal((3, 4)).astype(np.float32)  # Gemm A^T (transA=1): A is (in, out)
    w_half = rng.standard_normal((6, 3)).astype(np.float16)  # MatMul B in float16, (in, out)
    model = gemm_graph(
        {"plain": w_plain, "left": w_left, "transA": w_transA, "half": w_half},
        [helper.make_node("Gemm", ["x", "plain"], ["a"], name="g1"),
         helper.make_node("Transpose", ["a"], ["at"]),
         helper.make_node("MatMul", ["left", "at"], ["b"], name="m1"),
         helper.make_node("Gemm", ["transA", "b"], ["c"], name="g2", transA=1),
         helper.make_node("Cast", ["c"], ["ch"], to=TensorProto.FLOAT16),
         helper.make_node("Transpose", ["ch"], ["cht"]),
         helper.make_node("Cast", ["cht"], ["chf"], to=TensorProto.FLOAT16),
         helper.make_node("MatMul", ["chf", "half"], ["y"], name="m2")])
    onnx.save(model, tmp_path / "g.onnx")
    layers, matrices, meta = fetch_file_source(tmp_path / "g.onnx", tmp_path / "out")
    assert [l["name"] for l in layers] == ["plain", "left", "transA", "half"]
    np.testing.assert_array_equal(matrices["plain"], w_plain.T)
    np.testing.assert_array_equal(matrices["left"], w_left)
    np.testing.assert_array_equal(matrices["transA"], w_transA.T)
    np.testing.assert_array_equal(matrices["half"], w_half.T.astype(np.float32))
    assert meta["stored_tensors"]["half"]["dtype"] == "FLOAT16"


def test_external_data_is_read_from_its_file_and_a_missing_file_is_a_clear_error(tmp_path, rng):
    weight = rng.standard_normal((64, 32)).astype(np.float32)
    model = gemm_graph({"fc.weight": weight}, [helper.make_node("Gemm", ["x", "fc.weight"], ["y"], transB=1)])
    folder = tmp_path / "exported"
    folder.mkdir()
    onnx.save(model, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    assert (folder / "m.onnx.data").is_file()
    _, matrices, _ = fetch_file_source(folder / "m.onnx", tmp_path / "out")
    np.testing.assert_array_equal(matrices["fc"], weight)

    (folder / "m.onnx.data").unlink()
    with pytest.raises(FetchError, match=r"model 'm'.*m\.onnx.*'fc\.weight'.*m\.onnx\.data.*missing") as error:
        fetch_file_source(folder / "m.onnx", tmp_path / "out2")
    assert "copy that file next to the .onnx file" in str(error.value)
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


def test_external_data_outside_the_models_folder_is_refused(tmp_path, rng):
    model = gemm_graph({"w": rng.standard_normal((4, 4)).astype(np.float32)},
                       [helper.make_node("MatMul", ["x", "w"], ["y"])])
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    (tmp_path / "inner").mkdir()
    onnx.save(model, tmp_path / "inner" / "m.onnx")
    with pytest.raises(FetchError, match="outside the model's folder"):
        fetch_file_source(tmp_path / "inner" / "m.onnx", tmp_path / "out")


def test_a_damaged_onnx_file_names_model_and_file(tmp_path):
    torch.manual_seed(0)
    export(torch.nn.Linear(4, 3), tmp_path / "m.onnx", torch.randn(1, 4))
    data = (tmp_path / "m.onnx").read_bytes()
    (tmp_path / "m.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(FetchError, match=r"model 'm'.*m\.onnx"):
        fetch_file_source(tmp_path / "m.onnx", tmp_path / "out")


def test_a_safetensors_file_whose_header_length_looks_like_onnx_is_not_taken_for_onnx(tmp_path):
    from safetensors.numpy import load_file, save_file

    # header length 0x121008: little-endian bytes 08 10 12, ONNX's ir_version tag, a version and
    # producer_name's tag
    save_file({"fc.weight": np.ones((3, 2), np.float32)}, str(tmp_path / "w.safetensors"),
              metadata={"pad": "x" * (0x121008 - 200)})
    data = bytearray((tmp_path / "w.safetensors").read_bytes())
    length = int.from_bytes(data[:8], "little")
    data[8 + length - 1: 8 + length - 1] = b" " * (0x121008 - length)  # pad the header with spaces
    data[:8] = (0x121008).to_bytes(8, "little")
    (tmp_path / "w.safetensors").write_bytes(bytes(data))
    assert load_file(str(tmp_path / "w.safetensors"))["fc.weight"].shape == (3, 2)  # still valid
    assert formats.detect(tmp_path / "w.safetensors") is None


def test_the_layer_selection_applies_to_onnx_layers_and_is_recorded(tmp_path, rng):
    """Selection (zooscope.sources.selection) on a format reader's layers: the cap sees the
    oriented (out, in) shape, and each layer left out keeps its reason in tensors.json."""
    import json

    from zooscope.sources.fetch import fetch_model

    wide = rng.standard_normal((300, 20)).astype(np.float32)  # Gemm B (in, out): the layer is 20 x 300
    small = rng.standard_normal((20, 8)).astype(np.float32)
    model = gemm_graph({"wide": wide, "small": small},
                       [helper.make_node("Gemm", ["x", "wide"], ["a"]), helper.make_node("MatMul", ["a", "small"], ["y"])])
    onnx.save(model, tmp_path / "g.onnx")
    row = {"model": "g", "series": "s", "source": "file:g.onnx", "accuracy": ""}
    fetch_model(row, tmp_path / "out", sheet_dir=tmp_path, select={"max_dim": 100})
    layers = json.loads((tmp_path / "out" / "layers.json").read_text())["layers"]
    assert [layer["name"] for layer in layers] == ["small"]
    stored = json.loads((tmp_path / "out" / "tensors.json").read_text())["tensors"]
    records = {record["tensor"]: record for record in stored}
    assert records["wide"]["reason"] == "over a cap" and "300 > max_dim=100" in records["wide"]["detail"]
    assert records["small"]["reason"] == "" and records["small"]["layer"] == "small"
