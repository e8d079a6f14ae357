"""Unit tests of zooscope.models.digits: the split, label noise, determinism and training quality.

The accuracy thresholds come from the task (a clean MLP generalises; an MLP trained on random
labels memorises them but is at chance on the test split), not from this code's output.
"""
import numpy as np
import pytest
import torch
from torch import nn

from zooscope.models.architectures import build_architecture
from zooscope.models.catalog import TRAINING_DEFAULTS, TrainingConfig
from zooscope.models.digits import (
    accuracy,
    deterministic_torch,
    load_digits_split,
    noisy_labels,
    train,
)


def test_split_is_stratified_75_25_with_inputs_in_unit_range():
    data = load_digits_split()
    assert len(data.y_train) == 1347 and len(data.y_test) == 450  # 1797 digits, 25 % test
    assert data.x_train.shape == (1347, 64) and data.x_train.dtype == torch.float32
    assert data.y_train.dtype == torch.int64
    for x in (data.x_train, data.x_test):
        assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() == 1.0
    train_share = np.bincount(data.y_train.numpy(), minlength=10) / 1347
    test_share = np.bincount(data.y_test.numpy(), minlength=10) / 450
    np.testing.assert_allclose(train_share, test_share, atol=0.01)


def test_split_is_fixed():
    from sklearn.datasets import load_digits

    data = load_digits_split()
    everything = np.sort(np.concatenate([data.x_train.numpy(), data.x_test.numpy()]), axis=0)
    np.testing.assert_allclose(everything, np.sort(load_digits().data / 16.0, axis=0), rtol=1e-6)
    load_digits_split.cache_clear()
    again = load_digits_split()
    assert torch.equal(again.x_test, data.x_test) and torch.equal(again.y_train, data.y_train)


def test_label_noise_shuffles_exactly_the_chosen_fraction():
    labels = load_digits_split().y_train
    noisy = noisy_labels(labels, 0.25, seed=0)
    changed = (noisy != labels).sum().item()
    assert 0 < changed <= round(0.25 * len(labels))
    assert changed > 0.8 * round(0.25 * len(labels))  # a shuffle keeps ~1/10 of labels by chance
    assert torch.equal(torch.bincount(noisy), torch.bincount(labels))  # class balance kept
    assert torch.equal(noisy_labels(labels, 0.25, seed=0), noisy)
    assert not torch.equal(noisy_labels(labels, 0.25, seed=1), noisy)
    assert torch.equal(noisy_labels(labels, 0.0, seed=0), labels)


def test_full_label_noise_is_a_random_permutation():
    labels = load_digits_split().y_train
    noisy = noisy_labels(labels, 1.0, seed=0)
    assert torch.equal(noisy.sort().values, labels.sort().values)
    agreement = (noisy == labels).float().mean().item()
    assert agreement < 0.2  # ~10 % agree by chance


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_label_noise_out_of_range(fraction):
    with pytest.raises(ValueError, match="label_noise"):
        noisy_labels(torch.arange(10), fraction, seed=0)


def test_deterministic_torch_seeds_and_restores_global_state():
    threads = torch.get_num_threads()
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_torch(seed=3, threads=1):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        first = torch.rand(4)
    with deterministic_torch(seed=3, threads=1):
        second = torch.rand(4)
    assert torch.equal(first, second)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == before


def test_accuracy_in_percent_and_mode_restored():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    model.train()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert accuracy(model, x, torch.tensor([0, 1, 1, 1])) == 75.0
    assert model.training


def _trained(arch, options, **config):
    cfg = TrainingConfig(**{**vars(TRAINING_DEFAULTS[arch]), **config})
    with deterministic_torch(cfg.seed, threads=1):
        model = build_architecture(arch, options)
    return model, train(model, cfg, threads=1)


def test_clean_mlp_generalises():
    _, result = _trained("mlp", {"width": 128, "depth": 2})
    assert result.test_accuracy > 90.0
    assert result.train_accuracy > 95.0


def test_random_label_mlp_memorises_but_is_at_chance():
    _, result = _trained("mlp", {"width": 512, "depth": 2}, label_noise=1.0)
    assert result.train_accuracy >= 95.0
    assert result.test_accuracy < 25.0
    meta = result.to_meta()
    assert meta["label_noise"] == 1.0 and meta["train_accuracy"] == result.train_accuracy
    assert "seconds" not in meta  # meta.json must be identical on reruns


def test_random_label_lenet_memorises_but_is_at_chance():
    # the demo's CNN of the random-label experiment (zoos/demo.tsv, label-noise-cnn), its defaults
    _, result = _trained("lenet", {}, label_noise=1.0, seed=1)
    assert result.train_accuracy >= 95.0
    assert result.test_accuracy < 25.0


def test_training_is_deterministic():
    first, r1 = _trained("cnn", {"channels": 8}, epochs=1)
    second, r2 = _trained("cnn", {"channels": 8}, epochs=1)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert r1.to_meta() == r2.to_meta()


def test_invalid_training_config():
    model = build_architecture("mlp", {"width": 4, "depth": 1})
    with pytest.raises(ValueError, match="positive"):
        train(model, TrainingConfig(epochs=0, lr=1e-3, batch_size=8))


# --------------------------------------------------------------------------- architectures


def test_mlp_shape():
    model = build_architecture("mlp", {"width": 32, "depth": 3})
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 32), (32, 32), (32, 10)]
    assert model(torch.zeros(5, 64)).shape == (5, 10)


def test_cnn_shape_and_analysable_convolutions():
    model = build_architecture("cnn", {"channels": 64})
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(1, 64), (64, 64), (64, 128)]
    assert sum(m.in_channels >= 50 for m in convs) >= 2  # slices with >= 50 eigenvalues
    assert model(torch.zeros(5, 64)).shape == (5, 10)
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


def test_lenet_shape():
    model = build_architecture("lenet", {"channels": 8, "width": 20})
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(1, 8), (8, 8)]
    # 8 channels on the 4 x 4 grid left after the 2 x 2 max-pool of the 8 x 8 image
    assert [(m.in_features, m.out_features) for m in linears] == [(8 * 16, 20), (20, 10)]
    assert model(torch.zeros(5, 64)).shape == (5, 10)
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


def test_architecture_defaults():
    model = build_architecture("mlp")
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [256, 256, 10]


@pytest.mark.parametrize("name, options, message", [
    ("resnet", {}, r"unknown architecture 'resnet'; valid architectures: cnn, lenet, mlp"),
    ("mlp", {"channels": 8}, r"unknown option\(s\) 'channels' for architecture 'mlp'; valid options: depth, width"),
    ("cnn", {"channels": 0}, r"'channels' of architecture 'cnn' must be a positive integer"),
    ("mlp", {"width": "64"}, r"'width' of architecture 'mlp' must be a positive integer"),
    ("mlp", {"depth": True}, r"'depth' of architecture 'mlp' must be a positive integer"),
])
def test_architecture_errors(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_architecture(name, options)
