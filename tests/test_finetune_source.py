"""finetune:full and finetune:lora (zooscope.sources.finetune), and train:'s classes and stop_epoch:
a base trained on part of the digits, fine-tuned to the whole task, checked against what the
merged weights do when run again, and reproducible to the byte."""
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import checked_meta
from zooscope.sources.fetch import fetch_model

BASE = {"model": "base", "series": "s", "source": "train:mlp", "accuracy": None, "width": "32", "depth": "1",
        "epochs": "4", "classes": "5"}


def fetch(row, out, base_dir=None):
    fetch_model(row, out, threads=1, base_dir=base_dir)
    return checked_meta(out), load_file(str(out / "model.safetensors"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    return out, *fetch(BASE, out)


def run_merged(weights, unseen=False):
    """The test accuracy of the MLP with these weights, run here (not by the fetch); ``unseen``:
    on the test samples of the digits 5 .. 9 only."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    _, x, _, y = train_test_split(digits.data / 16.0, digits.target, test_size=0.25, stratify=digits.target,
                                  random_state=0)
    hidden = np.maximum(x @ weights["net.0.weight"].T.astype(np.float64) + weights["net.0.bias"], 0.0)
    logits = hidden @ weights["net.2.weight"].T.astype(np.float64) + weights["net.2.bias"]
    keep = y >= 5 if unseen else np.ones_like(y, dtype=bool)
    return 100.0 * np.mean(logits.argmax(axis=1)[keep] == y[keep])


def test_a_base_of_five_digits_trains_on_their_samples_only(base):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _, meta, weights = base
    digits = load_digits()
    _, _, y_train, _ = train_test_split(digits.data, digits.target, test_size=0.25, stratify=digits.target,
                                        random_state=0)
    assert meta["training"]["train_samples"] == int(np.sum(y_train < 5)) and meta["training"]["classes"] == 5
    # tested on all ten digits: at most the share of the five it has seen
    assert meta["accuracy"] <= 100.0 * 229 / 450 and meta["accuracy"] == pytest.approx(run_merged(weights), abs=0.3)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_a_fine_tune_of_the_base_learns_the_whole_task_and_reruns_to_the_byte(base, tmp_path, mode):
    base_dir, base_meta, base_weights = base
    row = {"model": mode, "series": "s", "source": f"finetune:{mode}", "accuracy": None, "base": "base",
           "epochs": "6", "lr": "0.01", **({"lora_rank": "2", "lora_alpha": "4"} if mode == "lora" else {})}
    meta, weights = fetch(row, tmp_path / "a", base_dir)
    # the digits the base never saw: the base does not predict them, the fine-tune above chance (10 %)
    assert run_merged(base_weights, unseen=True) < 5 and run_merged(weights, unseen=True) > 10
    assert meta["accuracy"] > base_meta["accuracy"]
    # the stored (merged) weights give the measured accuracy when run again (to a sample of float rounding)
    assert meta["accuracy"] == pytest.approx(run_merged(weights), abs=0.3)
    assert meta["finetune"] == {"mode": mode, "base": "base"}
    if mode == "lora":
        adapter = meta["adapter"]
        assert adapter["r"] == 2 and adapter["target_modules"] == ["net.0", "net.2"] and adapter["folder"] is None
        for key in ("net.0.weight", "net.2.weight"):
            factors = adapter["layers"][key]
            update = factors["scale"] * weights[factors["left"]].astype(np.float64) @ weights[factors["right"]]
            np.testing.assert_allclose(weights[key] - base_weights[key], update, atol=1e-5)
            assert np.linalg.matrix_rank(update) == 2
    again = tmp_path / "b"
    fetch(row, again, base_dir)
    for name in ("model.safetensors", "meta.json", "layers.json"):
        assert (tmp_path / "a" / name).read_bytes() == (again / name).read_bytes(), name


def test_stop_epoch_is_a_checkpoint_of_the_run(tmp_path):
    run = {**BASE, "classes": "10", "epochs": "3"}
    _, whole = fetch(run, tmp_path / "whole")
    _, last = fetch({**run, "stop_epoch": "3"}, tmp_path / "last")
    _, early = fetch({**run, "stop_epoch": "1"}, tmp_path / "early")
    assert all(np.array_equal(whole[key], last[key]) for key in whole)
    assert not np.array_equal(whole["net.0.weight"], early["net.0.weight"])


@pytest.mark.parametrize("cells, message", [
    ({"source": "finetune:full", "base": "base", "lora_rank": "2"}, "apply to finetune:lora only"),
    ({"source": "finetune:lora", "base": "base", "lora_rank": "0"}, "must be positive"),
    ({"source": "train:mlp", "classes": "1"}, "'classes' must be 2 .. 10"),
    ({"source": "train:mlp", "epochs": "3", "stop_epoch": "4"}, "'stop_epoch' must be 0"),
])
def test_bad_options_name_the_model(cells, message):
    from zooscope.zoo import RowError, parse_row

    with pytest.raises(RowError, match=f"model 'm': .*{message}"):
        parse_row({"model": "m", "series": "s", "accuracy": None, **cells})
