"""Cluster resource requests (memory, run time) of a model's esd and fit jobs, from its tensor sizes.

The requests are read from the model's ``layers.json`` (written by its fetch job). Snakemake
evaluates a rule's callable resources again right before it schedules a job whose inputs are
all present (the scheduler resets them), so on a cluster every esd/fit job is submitted with the
estimate of its own model. Where the file does not exist yet (a dry run before the fetch) the
stage's ``DEFAULTS`` are returned; a dry run therefore shows those.

Memory, esd: a job holds one weight tensor at a time (``safe_open``): the tensor as read (at most
4 bytes per element: float32; a bf16 model cache holds 2), its float64 copy (8), the M x M Gram matrix (at most 8 per element, M <= N)
and LAPACK's eigvalsh workspace (about as much): ``ESD_BYTES_PER_ELEMENT`` = 32 bytes per element
of the largest tensor, that is 8 times its float32 size. Large layers' Gram matrices are held a
batch at a time (zooscope.spectra.esd.compute_model_esd) within half of that,
``GRAM_BATCH_BYTES_PER_ELEMENT`` (:func:`gram_batch_bytes`). Memory, fit: the eigenvalues of one matrix
and about a dozen per-candidate arrays of the same length (the KS grid is evaluated in fixed-size
chunks): ``FIT_BYTES_PER_EIGENVALUE`` = 128 bytes per eigenvalue of the largest matrix. Both add
``BASE_MB`` for the interpreter and libraries (about 200 MB measured, with headroom).

Run time: the base start-up plus the work of every matrix at a deliberately slow rate (a
loaded, shared node): esd does N*M^2 (Gram matrix) + 10*M^3 (eigvalsh) flops per matrix at
``ESD_FLOPS_PER_MINUTE``; fit costs ``1 / FIT_EVALS_PER_MINUTE`` minutes per eigenvalue.
A Conv weight (out, in, *kernel) counts as prod(kernel) matrices of out x in, whatever ``conv2d``
is set to (an estimate; the slow rates leave room for other settings and the randomization ESD).

A model with a base (zoo column ``base``) also computes each layer's update in its esd job
(zooscope.spectra.delta_esd): the float64 update and the base's float64 copy add
``DELTA_BYTES_PER_ELEMENT`` per element of the largest tensor, and the update's spectrum as much
work again as the layer's own (``DELTA_WORK``).

A sharded model's esd work is split by :func:`shard_layers` (the same flop count), each shard job
asks for its own layers' estimate, and the job that merges the shards' indexes for ``MERGE``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

BASE_MB = 1024
BASE_MINUTES = 10
ESD_BYTES_PER_ELEMENT = 32
GRAM_BATCH_BYTES_PER_ELEMENT = 16
FIT_BYTES_PER_EIGENVALUE = 128
ESD_FLOPS_PER_MINUTE = 3e10  # 0.5 GFLOP/s
FIT_EVALS_PER_MINUTE = 1e6
DELTA_BYTES_PER_ELEMENT = 16
DELTA_WORK = 2.0


@dataclass(frozen=True)
class JobResources:
    mem_mb: int
    runtime: int  # minutes, as Snakemake's standard resource


DEFAULTS = {"esd": JobResources(mem_mb=4096, runtime=60), "fit": JobResources(mem_mb=2048, runtime=30)}
# The merge of a sharded model's esd: it reads small JSON indexes only.
MERGE = JobResources(mem_mb=BASE_MB, runtime=BASE_MINUTES)


def _check_stage(stage: str) -> None:
    if stage not in DEFAULTS:
        raise ValueError(f"no resource estimate for stage {stage!r}; known stages: {sorted(DEFAULTS)}")


def layer_matrices(shape) -> tuple[int, int, int]:
    """(count, N, M) of the matrices a layer of this PyTorch weight shape is analysed as."""
    if len(shape) < 2:
        raise ValueError(f"a weight shape needs at least 2 dimensions, got {list(shape)}")
    out, inp, *kernel = (int(d) for d in shape)
    return math.prod(kernel), max(out, inp), min(out, inp)


def esd_flops(shape) -> int:
    """Eigenvalue work of one layer: N*M^2 (Gram matrix) + 10*M^3 (eigvalsh) per matrix."""
    count, n, m = layer_matrices(shape)
    return count * (n * m * m + 10 * m**3)


def gram_batch_bytes(shapes) -> int:
    """The most bytes of Gram matrices an esd job of layers of these shapes holds at once:
    ``GRAM_BATCH_BYTES_PER_ELEMENT`` per element of the largest tensor, within its memory estimate."""
    return GRAM_BATCH_BYTES_PER_ELEMENT * max((math.prod(shape) for shape in shapes), default=0)


def gram_batches(sizes, threads: int, budget: int) -> list[list[int]]:
    """Positions of ``sizes`` (bytes of each layer's Gram matrices) in consecutive batches of at
    most ``threads`` layers and ``budget`` bytes, each at least one layer."""
    batches: list[list[int]] = []
    held = 0
    for position, size in enumerate(sizes):
        if not batches or len(batches[-1]) >= threads or held + size > budget:
            batches.append([])
            held = 0
        batches[-1].append(position)
        held += size
    return batches


def shard_layers(shapes, shards: int) -> list[list[int]]:
    """Split layers (their weight shapes, in depth order) into ``shards`` groups of similar work.

    Longest-processing-time first: the layers by decreasing :func:`esd_flops` (depth order on
    ties), each onto the group with the least work so far (the first on ties); within a group
    the positions are in depth order. Deterministic, so every job of a model agrees on it.
    Groups may be empty when there are fewer layers than shards.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    work = [esd_flops(shape) for shape in shapes]
    groups: list[list[int]] = [[] for _ in range(shards)]
    loads = [0] * shards
    for position in sorted(range(len(work)), key=lambda i: (-work[i], i)):
        target = min(range(shards), key=lambda g: (loads[g], g))
        groups[target].append(position)
        loads[target] += work[position]
    return [sorted(group) for group in groups]


def parse_shard(text: str) -> tuple[int, int]:
    """(k, K) of a shard name "k-of-K" (the esd_shard rule's wildcard)."""
    k, sep, shards = str(text).partition("-of-")
    if not (sep and k.isdigit() and shards.isdigit()):
        raise ValueError(f"shard {text!r} is not of the form k-of-K, e.g. 2-of-4")
    return int(k), int(shards)


def estimate(stage: str, shapes, *, with_base: bool = False) -> JobResources:
    """Memory (MB) and run time (minutes) of the ``stage`` job of a model with these weight shapes
    (``with_base``: an esd job that also computes the updates against a base)."""
    _check_stage(stage)
    matrices = [layer_matrices(shape) for shape in shapes]
    if stage == "esd":
        largest = max((math.prod(shape) for shape in shapes), default=0)
        memory = largest * (ESD_BYTES_PER_ELEMENT + (DELTA_BYTES_PER_ELEMENT if with_base else 0))
        minutes = sum(esd_flops(shape) for shape in shapes) / ESD_FLOPS_PER_MINUTE * (DELTA_WORK if with_base else 1)
    else:
        memory = max((m for _, _, m in matrices), default=0) * FIT_BYTES_PER_EIGENVALUE
        minutes = sum(c * m for c, _, m in matrices) / FIT_EVALS_PER_MINUTE
    return JobResources(mem_mb=BASE_MB + math.ceil(memory / 2**20), runtime=BASE_MINUTES + math.ceil(minutes))


def stage_resources(stage: str, layers_json: str | Path, shard: tuple[int, int] | None = None, *,
                    with_base: bool = False) -> JobResources:
    """The estimate for the model described by ``layers_json`` (``shard=(k, K)``: for its esd
    shard k of K; ``with_base``: its esd job computes the updates against a base too), or the
    stage's defaults if that file does not exist yet."""
    path = Path(layers_json)
    _check_stage(stage)
    if not path.is_file():
        return DEFAULTS[stage]
    try:
        shapes = [layer["shape"] for layer in json.loads(path.read_text())["layers"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: not a layers.json of the fetch stage ({exc!r}); delete it to fetch the model again"
        ) from exc
    if shard is not None:
        shapes = [shapes[i] for i in shard_layers(shapes, shard[1])[shard[0] - 1]]
    return estimate(stage, shapes, with_base=with_base)


def model_shards(shards: int | None, path: Path | None, shard_mb: float | None) -> int:
    """How many esd shards a model gets: its zoo column ``shards`` if set, else, with config
    ``esd.shard_mb``, one per ``shard_mb`` MB of the weights at ``path`` (a ``file:`` source's,
    resolved: zooscope.zoo.Source.path), else 1.

    Decided when the workflow is parsed, before any fetch, so the size rule sees only weights that
    are on disk already: a ``file:`` source (a file, or a folder's top-level files). Hub, train
    and random sources (``path`` None) are sized by their column alone.
    """
    if shards is not None:
        return shards
    if shard_mb is None or path is None:
        return 1
    size = weights_bytes(path)
    if size is None:
        return 1  # the fetch job reports the missing path
    return max(1, math.ceil(size / (shard_mb * 2**20)))


def weights_bytes(path: Path) -> int | None:
    """The size of local weights: a file's, or the sum of a folder's top-level files (a sharded
    checkpoint, an exported folder); None where nothing is there yet."""
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())
    return None


def fetch_priority(paths: list[Path]) -> float:
    """Rule fetch's priority for a model with these local weights: in [0, 1), larger weights
    higher, so that the largest model, whose esd is the longest job, is fetched first (longest
    first shortens a run on few cores); below rule esd's priority 1, so that a fetched model's esd
    still goes before further fetches. Hub, train and random sources (no local weights) get 0."""
    size = sum(weights_bytes(path) or 0 for path in paths)
    return size / (size + 2**30)
