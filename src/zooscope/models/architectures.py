"""The demo zoo's architectures, small enough to train on the digits data in seconds.

Each architecture name maps to its builder here and to the options it accepts (with defaults) in
zooscope.models.catalog (torch-free, so the Snakefile checks a sheet against it), so that a zoo sheet's ``train:ARCH``/``random:ARCH`` rows are checked against one list and a typo
gives an error that names the valid choices instead of a ``TypeError`` deep inside ``torch.nn``.
Inputs are the 8x8 digits images flattened to 64 features; outputs are the 10 class scores.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import Tensor, nn

from zooscope.models.catalog import architecture_options

NUM_INPUTS = 64
NUM_CLASSES = 10
IMAGE_SIDE = 8


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units (Linear + ReLU), then a Linear classifier."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = NUM_INPUTS
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, NUM_CLASSES))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


def two_convolutions_and_a_pool(channels: int) -> list[nn.Module]:
    """The first block of the CNN and the LeNet: 1 -> c -> c channels, 3x3 (same padding), 2x2 max-pool."""
    return [nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(), nn.MaxPool2d(2)]


class CNN(nn.Module):
    """Three 3x3 convolutions (c, c, 2c channels) with one 2x2 max-pool, global average pool, Linear.

    Two of the convolutions have ``channels`` input channels, so at ``channels >= 50`` their
    (out x in) kernel slices have at least 50 eigenvalues and are analysed.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            *two_convolutions_and_a_pool(c),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * c, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        """Accept flattened (N, 64) or image (N, 1, 8, 8) inputs, so one data pipeline serves all."""
        return self.classifier(self.features(x.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)))


class LeNet(nn.Module):
    """Two 3x3 convolutions (c, c channels), one 2x2 max-pool, then a fully connected head
    (16c -> ``width`` -> 10), as LeNet.

    The demo's CNN for the random-label experiment: the CNN above pools its features globally
    down to 2c numbers and cannot memorise random labels in a demo's budget (measured: 14 %
    training accuracy after 30 epochs at c = 64), while this one can (98.5 % after 40 epochs at
    c = 32, width = 512). The head's (16c x width) matrix has >= 50 eigenvalues at 16c, width
    >= 50; the convolutions' (c x c) kernel slices need c >= 50 for the weight ESD.
    """

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(*two_convolutions_and_a_pool(c), nn.Flatten())
        pooled = c * (IMAGE_SIDE // 2) ** 2
        self.classifier = nn.Sequential(nn.Linear(pooled, width), nn.ReLU(), nn.Linear(width, NUM_CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        """Flattened (N, 64) or image (N, 1, 8, 8) inputs, as the CNN."""
        return self.classifier(self.features(x.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)))


# The builder of each architecture; its options and defaults: zooscope.models.catalog.
BUILDERS: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "cnn": CNN, "lenet": LeNet}


def build_architecture(name: str, options: Mapping[str, Any] | None = None) -> nn.Module:
    """Build architecture ``name`` with ``options`` (missing ones take their defaults).

    Initialisation uses torch's global RNG: seed it first (``torch.manual_seed``) for a
    reproducible model.
    """
    checked = architecture_options(name, options)  # first: it names an unknown architecture
    return BUILDERS[name](**checked)
