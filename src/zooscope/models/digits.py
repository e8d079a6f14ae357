"""The demo zoo's data and training: scikit-learn's bundled 8x8 digits, offline and small.

Everything here is deterministic (fixed split, seeded label noise, seeded initialisation and
batch order, ``torch.use_deterministic_algorithms``), so a rerun of ``fetch`` on the same machine
with the same thread count rewrites byte-identical weights and the workflow's cache holds.
The label-noise experiment of the Jacobian drafts needs models that memorise random labels, so
the default schedule is long enough for the random-label MLP to fit its training set.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from zooscope.models.catalog import TrainingConfig

log = logging.getLogger(__name__)

SPLIT_SEED = 0
TEST_FRACTION = 0.25
PIXEL_MAX = 16.0  # digits pixels are integers 0..16


@dataclass(frozen=True)
class DigitsSplit:
    """Inputs (N, 64) float32 in [0, 1] and labels (N,) int64 of the train and test parts."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


@functools.lru_cache(maxsize=1)
def load_digits_split() -> DigitsSplit:
    """The fixed stratified 75/25 split of digits (1347 train, 450 test samples).

    Cached: every model of a zoo uses the same split; callers must not modify the tensors.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / PIXEL_MAX).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    return DigitsSplit(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (x_train, y_train, x_test, y_test)))


def noisy_labels(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Replace a ``fraction`` of ``labels``: round(fraction * n) seeded picks, shuffled among themselves.

    Shuffling (rather than drawing new labels) keeps the class balance; ``fraction = 1`` is a
    random permutation of all labels, i.e. the random-label experiment.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label_noise must be a fraction in [0, 1], got {fraction!r}")
    n = len(labels)
    count = round(fraction * n)
    noisy = labels.clone()
    if count == 0:
        return noisy
    rng = np.random.default_rng(seed)
    picked = torch.from_numpy(np.sort(rng.choice(n, size=count, replace=False)))
    noisy[picked] = labels[picked][torch.from_numpy(rng.permutation(count))]
    return noisy


@dataclass(frozen=True)
class TrainingResult:
    """What a training run achieved, in percent; ``seconds`` is wall time, for logs only."""

    train_accuracy: float
    test_accuracy: float
    config: TrainingConfig
    threads: int
    seconds: float

    def to_meta(self) -> dict:
        """The reproducible part for meta.json: everything but the wall time."""
        return {
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            **asdict(self.config),
            "threads": self.threads,
            "optimizer": "Adam, one-cycle lr schedule",
            "train_samples": len(training_part(load_digits_split().x_train, load_digits_split().y_train,
                                               self.config.classes)[1]),
            "test_samples": len(load_digits_split().y_test),
        }


@contextlib.contextmanager
def deterministic_torch(seed: int, threads: int) -> Iterator[None]:
    """Seed torch, force deterministic kernels and pin ``threads`` intra-op threads.

    Results of float reductions can depend on the thread count, so the same ``threads`` is part
    of reproducing a model. The previous global settings are restored on exit, because the
    process (a test session, say) may go on to do other work.
    """
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.set_num_threads(previous_threads)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of ``model`` on (x, y) in percent, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        correct = (model(x).argmax(dim=1) == y).sum().item()
    finally:
        model.train(was_training)
    return 100.0 * correct / len(y)


def held_out_accuracy(model: nn.Module) -> float:
    """Accuracy in percent on the clean digits test split (not named test_*: pytest would collect it)."""
    data = load_digits_split()
    return accuracy(model, data.x_test, data.y_test)


def train(model: nn.Module, config: TrainingConfig, *, threads: int = 1) -> TrainingResult:
    """Train ``model`` in place on the (noisy) digits training labels; measure both accuracies.

    ``config.classes`` below 10 trains on the samples of the digits 0 .. classes - 1 only (their
    labels then noised); ``config.stop_epoch`` stops the run's schedule early (a checkpoint).
    Train accuracy is on the labels the model was trained on (noisy ones included), test
    accuracy on the clean test split (all ten digits). Deterministic for a given config and ``threads``.
    """
    data = load_digits_split()
    x, clean = training_part(data.x_train, data.y_train, config.classes)
    labels = noisy_labels(clean, config.label_noise, config.seed)
    start = time.perf_counter()
    with deterministic_torch(config.seed, threads):
        _fit(model, x, labels, config)
    seconds = time.perf_counter() - start
    result = TrainingResult(
        train_accuracy=accuracy(model, x, labels),
        test_accuracy=accuracy(model, data.x_test, data.y_test),
        config=config,
        threads=threads,
        seconds=seconds,
    )
    log.info(
        "trained %s for %d epochs in %.1f s: train %.2f %%, test %.2f %%",
        type(model).__name__, config.epochs, seconds, result.train_accuracy, result.test_accuracy,
    )
    return result


def training_part(x: Tensor, labels: Tensor, classes: int) -> tuple[Tensor, Tensor]:
    """The training samples of the digits 0 .. classes - 1 (all of them for 10 classes)."""
    if classes >= 10:
        return x, labels
    keep = labels < classes
    return x[keep], labels[keep]


def _fit(model: nn.Module, x: Tensor, y: Tensor, config: TrainingConfig) -> None:
    """Minibatch Adam with a one-cycle schedule; the batch order comes from a seeded generator."""
    if config.epochs < 1 or config.batch_size < 1 or not config.lr > 0:
        raise ValueError(f"epochs, batch_size and lr must be positive, got {config}")
    batches_per_epoch = -(-len(x) // config.batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * batches_per_epoch
    )
    order = torch.Generator().manual_seed(config.seed)
    model.train()
    for _ in range(config.stop_epoch or config.epochs):
        permutation = torch.randperm(len(x), generator=order)
        for batch in permutation.split(config.batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
