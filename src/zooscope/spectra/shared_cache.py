"""The zoo's shared ESD store: a layer's spectrum computed once for every model that has it.

Content-addressed: an entry's name is its cache key (zooscope.spectra.esd.cache_key: the weights'
sha256, type, shape and the spectrum settings), not a model's or a layer's name, so the frozen
layers of a hundred fine-tunes, a base shared by many adapters or one checkpoint in two series
are computed once. ``{root}/{key[:2]}/{key}.npy`` holds the eigenvalues (``.rand.npy`` the shuffled
matrices', with ``randomize``) and ``{key}.json`` what a record needs (slices, N, M), written last:
its commit marker.

Safe under parallel jobs without locks: every file is written to a temporary name in its folder
and renamed into place (atomic on POSIX), the marker after the arrays. Two jobs that compute the
same key write the same bytes, so whichever rename lands last changes nothing; a reader that sees
a marker sees complete arrays. A model's esd folder takes a hard link to the store's arrays (a
copy where the file system has none), so a shared spectrum costs its disk space once.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from zooscope import io

RAND_SUFFIX = ".rand.npy"


class SharedStore:
    """The store under ``root``: :meth:`get` an entry into a model's folder, :meth:`put` one."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, key: str, suffix: str) -> Path:
        return self.root / key[:2] / f"{key}{suffix}"

    def get(self, key: str, npy_path: Path, rand_path: Path | None) -> dict | None:
        """Place entry ``key``'s arrays at ``npy_path`` (and ``rand_path`` when given) and return
        its fields (slices, N, M); None, placing nothing, when the store lacks the entry."""
        marker = self._path(key, ".json")
        if not marker.is_file():
            return None
        sources = [(self._path(key, ".npy"), npy_path)]
        if rand_path is not None:
            sources.append((self._path(key, RAND_SUFFIX), rand_path))
        if not all(source.is_file() for source, _ in sources):
            return None  # an entry stored without its shuffled ESD: computed afresh
        for source, target in sources:
            _link(source, target)
        return io.read_json(marker)

    def put(self, key: str, fields: dict, npy_path: Path, rand_path: Path | None) -> None:
        """Store a computed entry (its arrays from a model's folder, then ``fields`` as the marker)."""
        self._path(key, "").parent.mkdir(parents=True, exist_ok=True)
        _link(npy_path, self._path(key, ".npy"))
        if rand_path is not None:
            _link(rand_path, self._path(key, RAND_SUFFIX))
        io.write_json(self._path(key, ".json"), fields)


def _link(source: Path, target: Path) -> None:
    """``target`` becomes ``source``'s content, atomically: a hard link (or a copy) under a
    temporary name in ``target``'s folder, renamed onto ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or none with hard links
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass(frozen=True)
class Sharing:
    """How many of a zoo's layers hold weights that another layer of the zoo holds too: the
    spectra that the shared store computes once (``num_layers - num_distinct`` are reused).
    From the layers.json files alone, so the same zoo always reports the same figures, whichever
    job happened to compute a shared layer first."""

    num_layers: int
    num_distinct: int
    num_models_sharing: int

    @property
    def num_reused(self) -> int:
        return self.num_layers - self.num_distinct

    def sentence(self, enabled: bool = True) -> str:
        if not self.num_reused:
            return (f"Every one of the zoo's {self.num_layers} layers has weights of its own: no spectrum is "
                    "shared between models.")
        share = f"{self.num_reused} of the zoo's {self.num_layers} layers ({100 * self.num_reused / self.num_layers:.0f}%)"
        if not enabled:
            return (f"{share} have the weights of another layer of the zoo ({self.num_models_sharing} models share "
                    "layers); with config esd.shared_cache set, each such spectrum is computed once.")
        return (f"{share} have the weights of another layer of the zoo ({self.num_models_sharing} models share "
                f"layers): the shared store (config esd.shared_cache) needs {self.num_distinct} spectra for "
                f"{self.num_layers} layers.")


def zoo_sharing(layer_docs) -> Sharing:
    """The :class:`Sharing` of a zoo from its models' layers.json documents. Layers are the same
    when their weights hash, type and shape are (the run's spectrum settings are the same for all)."""
    owners: dict[tuple, set] = {}
    total = 0
    for doc in layer_docs:
        for layer in doc["layers"]:
            owners.setdefault((layer["sha256"], layer["type"], tuple(layer["shape"])), set()).add(doc.get("model"))
            total += 1
    # a layer repeated inside one model is shared too, but counts no second model
    sharing = {model for models in owners.values() if len(models) > 1 for model in models}
    return Sharing(total, len(owners), len(sharing))
