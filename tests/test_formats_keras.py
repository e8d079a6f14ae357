"""Keras files (zooscope.sources.formats.keras): .keras, .weights.h5 and legacy .h5 written by
Keras 3 itself (torch backend, in a subprocess), and Keras 2 layouts written with h5py. The
matrices are checked by running them: a layer's output computed by Keras from its own weights
equals torch's functional layer applied to the matrix zooscope read."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from conftest import fetch_file_source
from zooscope.sources import formats
from zooscope.sources.base import FetchError

import h5py
import torch
F = torch.nn.functional

KERAS_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, keras
    out = sys.argv[1]
    keras.utils.set_random_seed(0)
    # group names (dense, conv2d, dense_1), layer names and model order all sort differently
    image = keras.Sequential([
        keras.Input((6, 6, 3)), keras.layers.Dense(4, name="zeta"), keras.layers.Conv2D(5, 3, name="beta"),
        keras.layers.BatchNormalization(name="bn"), keras.layers.Flatten(), keras.layers.Dense(3, name="alpha")])
    text = keras.Sequential([
        keras.Input((7,), dtype="int32"), keras.layers.Embedding(20, 6, name="emb"),
        keras.layers.Conv1D(4, 2, name="temporal"), keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(2, use_bias=False, name="out")])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 6, 3)).astype("float32")
    tokens = rng.integers(0, 20, (2, 7)).astype("int32")
    image.compile(optimizer="adam", loss="mse")
    image.fit(x, np.zeros((2, 3), "float32"), epochs=1, verbose=0)  # the optimizer's state is saved too
    refs = {}
    for model, name, inputs in ((image, "image", x), (text, "text", tokens)):
        model.save(f"{out}/{name}.keras")
        model.save_weights(f"{out}/{name}.weights.h5")
        model.save(f"{out}/{name}.h5")
        value = inputs
        for layer in model.layers:  # each layer's input and output, and its variables
            result = layer(value)
            refs[f"{name}/{layer.name}/in"] = np.asarray(keras.ops.convert_to_numpy(value))
            refs[f"{name}/{layer.name}/out"] = np.asarray(keras.ops.convert_to_numpy(result))
            for i, weight in enumerate(layer.get_weights()):
                refs[f"{name}/{layer.name}/{i}"] = weight
            value = result
    np.savez(f"{out}/refs.npz", **refs)
""")


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    if importlib.util.find_spec("keras") is None:  # not imported here: it needs KERAS_BACKEND first
        pytest.skip("keras is not installed (pip install -e .[test])")
    folder = tmp_path_factory.mktemp("keras")
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    result = subprocess.run([sys.executable, "-c", KERAS_SCRIPT, str(folder)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, dict(np.load(folder / "refs.npz"))


def t(array):
    return torch.from_numpy(np.ascontiguousarray(array)).double()


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5", ".h5"])
def test_keras_files_give_the_layers_in_model_order_and_torch_layout(keras_files, suffix, tmp_path):
    folder, refs = keras_files
    path = folder / f"image{suffix}"
    assert formats.detect(path) == "keras"
    layers, matrices, meta = fetch_file_source(path, tmp_path / "image")
    assert [(l["name"], l["type"]) for l in layers] == [("zeta", "Linear"), ("beta", "Conv2d"), ("alpha", "Linear")]

    # Dense on an image acts on the channels: Keras' output equals torch's linear with our (out, in)
    zeta = F.linear(t(refs["image/zeta/in"]), t(matrices["zeta"]), t(refs["image/zeta/1"]))
    np.testing.assert_allclose(zeta.numpy(), refs["image/zeta/out"], rtol=1e-5, atol=1e-5)
    # Conv2D on NHWC: torch's conv2d on NCHW with our (out, in, kh, kw)
    beta = F.conv2d(t(refs["image/beta/in"]).permute(0, 3, 1, 2), t(matrices["beta"]), t(refs["image/beta/1"]))
    np.testing.assert_allclose(beta.permute(0, 2, 3, 1).numpy(), refs["image/beta/out"], rtol=1e-5, atol=1e-5)
    alpha = F.linear(t(refs["image/alpha/in"]), t(matrices["alpha"]), t(refs["image/alpha/1"]))
    np.testing.assert_allclose(alpha.numpy(), refs["image/alpha/out"], rtol=1e-5, atol=1e-5)

    reasons = [entry.get("reason") for entry in meta["stored_tensors"].values()]
    assert reasons.count("bias") == 3 and reasons.count("norm") == 4
    assert meta["file_format"] == "keras"
    if suffix != ".h5":  # Keras 3 files also hold the optimizer's state: recorded, never analysed
        optimizer = [e for e in meta["stored_tensors"].values() if e.get("detail") == "optimizer state"]
        # Adam: an iteration counter and a learning rate, then two moments for each of the 8
        # trainable variables (kernels and biases of zeta, beta, alpha; bn's gamma and beta)
        assert len(optimizer) == 2 + 2 * 8 and {e["reason"] for e in optimizer} == {"training state"}
    n_weights = sum(refs[f"image/{layer}/{i}"].size for layer, count in (("zeta", 2), ("beta", 2), ("bn", 4),
                                                                          ("alpha", 2)) for i in range(count))
    assert meta["num_params"] == n_weights


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5", ".h5"])
def test_keras_embedding_and_conv1d(keras_files, suffix, tmp_path):
    folder, refs = keras_files
    layers, matrices, _ = fetch_file_source(folder / f"text{suffix}", tmp_path / "text")
    assert [(l["name"], l["type"]) for l in layers] == [("emb", "Embedding"), ("temporal", "Conv1d"), ("out", "Linear")]
    np.testing.assert_array_equal(matrices["emb"], refs["text/emb/0"])
    temporal = F.conv1d(t(refs["text/temporal/in"]).transpose(1, 2), t(matrices["temporal"]), t(refs["text/temporal/1"]))
    np.testing.assert_allclose(temporal.transpose(1, 2).numpy(), refs["text/temporal/out"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(matrices["out"], refs["text/out/0"].T)


def test_a_deflated_keras_archive_is_read_too(keras_files, tmp_path):
    folder, refs = keras_files
    deflated = tmp_path / "image.keras"
    with zipfile.ZipFile(folder / "image.keras") as source, \
            zipfile.ZipFile(deflated, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for name in source.namelist():
            target.writestr(name, source.read(name))
    _, matrices, _ = fetch_file_source(deflated, tmp_path / "out")
    np.testing.assert_array_equal(matrices["alpha"], refs["image/alpha/0"].T)


def write_keras2(path, weights, *, config=None, optimizer=None):
    """A Keras 2 (tf.keras) HDF5 file as hdf5_format.save_weights_to_hdf5_group writes it:
    ``layer_names`` in model order, per layer ``weight_names`` such as ``dense_1/kernel:0`` and
    the datasets at ``<layer>/<layer>/<variable>:0``; a full model.save nests that in
    ``model_weights`` and adds ``model_config``."""
    with h5py.File(path, "w") as handle:
        root = handle.create_group("model_weights") if config else handle
        if config:
            handle.attrs["model_config"] = json.dumps(config).encode()
            handle.attrs["keras_version"] = b"2.15.0"
            handle.attrs["backend"] = b"tensorflow"
        root.attrs["layer_names"] = [name.encode() for name in weights]
        for layer, variables in weights.items():
            group = root.create_group(layer)
            group.attrs["weight_names"] = [f"{layer}/{v}:0".encode() for v in variables]
            for variable, value in variables.items():
                group.create_dataset(f"{layer}/{variable}:0", data=value)
        if optimizer:  # model.save(include_optimizer=True): optimizer_weights/<name>/<variable>:0
            states = handle.create_group("optimizer_weights")
            for name, value in optimizer.items():
                states.create_dataset(name, data=value)


def keras2_weights(rng):
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return {
        "conv2d_1": {"kernel": f(3, 3, 2, 8), "bias": f(8)},
        "batch_normalization_1": {"gamma": f(8), "beta": f(8), "moving_mean": f(8), "moving_variance": f(8)},
        "lstm_1": {"kernel": f(8, 16), "recurrent_kernel": f(4, 16), "bias": f(16)},
        "dense_1": {"kernel": f(16, 10), "bias": f(10)},
    }


KERAS2_CONFIG = {"class_name": "Sequential", "config": {"name": "sequential_1", "layers": [
    {"class_name": "Conv2D", "config": {"name": "conv2d_1"}},
    {"class_name": "BatchNormalization", "config": {"name": "batch_normalization_1"}},
    {"class_name": "LSTM", "config": {"name": "lstm_1"}},
    {"class_name": "Dense", "config": {"name": "dense_1"}}]}}


def test_a_keras2_model_file_uses_its_config_for_the_classes(tmp_path, rng):
    weights = keras2_weights(rng)
    moments = {"Adam/iter:0": np.int64(3), "Adam/dense_1/kernel/m:0": np.zeros((16, 10), np.float32)}
    write_keras2(tmp_path / "model.h5", weights, config=KERAS2_CONFIG, optimizer=moments)
    layers, matrices, meta = fetch_file_source(tmp_path / "model.h5", tmp_path / "out")
    assert [(l["name"], l["type"]) for l in layers] == [("conv2d_1", "Conv2d"), ("dense_1", "Linear")]
    np.testing.assert_array_equal(matrices["conv2d_1"], weights["conv2d_1"]["kernel"].transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(matrices["dense_1"], weights["dense_1"]["kernel"].T)
    tensors = meta["stored_tensors"]
    # the LSTM's kernel is rank 2 like a Dense's: its class says it is not one
    assert tensors["model_weights/lstm_1/lstm_1/kernel:0"]["reason"] == "not a layer weight"
    assert tensors["model_weights/batch_normalization_1/batch_normalization_1/moving_mean:0"]["reason"] == "norm"
    assert meta["file_format_info"]["keras_version"] == "2.15.0"
    assert {name: entry["reason"] for name, entry in tensors.items() if name.startswith("optimizer_weights/")} == {
        "optimizer_weights/Adam/iter:0": "training state", "optimizer_weights/Adam/dense_1/kernel/m:0": "training state"}
    assert meta["num_params"] == sum(value.size for variables in weights.values() for value in variables.values())


def test_keras2_weights_without_config_are_typed_by_their_variables(tmp_path, rng):
    weights = keras2_weights(rng)
    del weights["lstm_1"]  # without a config an LSTM's kernel cannot be told from a Dense's
    write_keras2(tmp_path / "w.h5", weights)
    layers, matrices, _ = fetch_file_source(tmp_path / "w.h5", tmp_path / "out")
    assert [(l["name"], l["type"]) for l in layers] == [("conv2d_1", "Conv2d"), ("dense_1", "Linear")]
    np.testing.assert_array_equal(matrices["dense_1"], weights["dense_1"]["kernel"].T)


def test_an_hdf5_file_that_is_not_keras_is_a_clear_error(tmp_path):
    with h5py.File(tmp_path / "data.h5", "w") as handle:
        handle["x"] = np.zeros((3, 3))
    with pytest.raises(FetchError, match=r"model 'm'.*data\.h5.*not a Keras weights file"):
        fetch_file_source(tmp_path / "data.h5", tmp_path / "out")
