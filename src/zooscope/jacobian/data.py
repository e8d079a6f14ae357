"""Data sets for the Jacobian stage: a zoo row's ``data`` and ``data_samples`` columns.

``data`` names where the samples come from:

* ``digits``: the demo's fixed digits split (zooscope.models.digits), its TEST part (450 samples):
  the models of the demo were trained on the other part, and the Jacobian drafts evaluate on
  test data (the Jacobian Spectral Density draft: "Evaluate over test set").
* a ``.npz`` file with arrays ``x`` (samples first, the model's input shape) and ``y`` (integer
  class labels); relative paths are relative to the zoo sheet's folder.
* a folder of images, one subfolder per class (class index = position of the subfolder's name in
  sorted order, as torchvision's ImageFolder); every image is read with PIL, converted to the mode
  of the first one (``L`` or ``RGB``), scaled to [0, 1] and laid out (C, H, W). All images must
  have the same size, and no normalisation is applied: the model must take such inputs.

At most ``data_samples`` samples are used (default zooscope.zoo.DEFAULT_SAMPLES, 512): when there
are more, the first k of a permutation seeded with DATA_SEED, put back in ascending index order.
The choice depends only on the number of samples and k, so every model evaluated on the same data
sees the same samples. The row's ``data`` arrives parsed (zooscope.zoo.DataSpec, path resolved).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from zooscope.zoo import DIGITS, DataSpec

DATA_SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


class DataError(ValueError):
    """A ``data`` value that cannot be loaded; the message names it and what was expected."""


@dataclass(frozen=True)
class Samples:
    """Inputs (float32, samples first), labels (int64) and which rows of the source they are."""

    x: Tensor
    y: Tensor
    indices: np.ndarray
    total: int
    source: str


def subsample_indices(total: int, samples: int, seed: int = DATA_SEED) -> np.ndarray:
    """Indices of the samples used: all of them, or the first ``samples`` of a seeded permutation,
    sorted."""
    if samples < 1:
        raise DataError(f"data_samples must be a positive integer, got {samples!r}")
    if total <= samples:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).permutation(total)[:samples])


def load_samples(data: DataSpec) -> Samples:
    """The (sub-sampled) data set of a zoo row (module docstring; zooscope.zoo.data_spec makes one)."""
    if data.path is None:
        x, y = _digits()
    else:
        path = data.path
        if path.is_dir():
            x, y = read_image_folder(path)
        elif path.suffix == ".npz" and path.is_file():
            x, y = read_npz(path)
        else:
            raise DataError(
                f"data {data.name!r}: not {DIGITS!r}, an existing .npz file or an image folder ({path})"
            )
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"data {data.name!r}: {len(x)} inputs and {len(y)} labels; need as many, at least one")
    indices = subsample_indices(len(x), data.samples)
    return Samples(
        x=torch.as_tensor(np.ascontiguousarray(x[indices]), dtype=torch.float32),
        y=torch.as_tensor(np.ascontiguousarray(y[indices]), dtype=torch.int64),
        indices=indices, total=len(x), source=data.name,
    )


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from zooscope.models.digits import load_digits_split

    split = load_digits_split()
    return split.x_test.numpy(), split.y_test.numpy()


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` and ``y`` of an .npz file, without pickles (object arrays are refused)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise DataError(f"{path}: no array(s) {', '.join(missing)}; found {', '.join(archive.files)}")
            x, y = archive["x"], archive["y"]
    except (OSError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"{path}: cannot read the .npz file: {error}") from None
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DataError(f"{path}: y must be a 1-D array of integer class labels, got {y.dtype} {y.shape}")
    return x.astype(np.float32), y.astype(np.int64)


def read_image_folder(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images of a class-per-subfolder tree as (N, C, H, W) float32 in [0, 1] and labels."""
    from PIL import Image

    classes = sorted(entry.name for entry in path.iterdir() if entry.is_dir())
    files = [(label, file) for label, name in enumerate(classes)
             for file in sorted((path / name).iterdir()) if file.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{path}: no images in class subfolders (expected {path}/CLASS/IMAGE.png)")
    images, mode = [], None
    for _, file in files:
        with Image.open(file) as image:
            mode = mode or ("L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB")
            array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
        if images and array.shape != images[0].shape:
            raise DataError(f"{file}: size {array.shape[:2]} differs from the first image's {images[0].shape[:2]}")
        images.append(array)
    x = np.stack(images)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return x, np.array([label for label, _ in files], dtype=np.int64)
