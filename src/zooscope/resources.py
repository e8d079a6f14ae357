"""Cluster resource requests (memory, run time) of a model's esd and fit jobs, from its tensor sizes.

The requests are read from the model's ``layers.json`` (written by its fetch job). Snakemake
evaluates a rule's callable resources again right before it schedules a job whose inputs are
all present (the scheduler resets them), so on a cluster every esd/fit job is submitted with the
estimate of its own model. Where the file does not exist yet (a dry run before the fetch) the
stage's ``DEFAULTS`` are returned; a dry run therefore shows those.

Memory, esd: a job holds one weight tensor at a time (``safe_open``): the float32 tensor as read
(4 bytes per element), its float64 copy (8), the M x M Gram matrix (at most 8 per element, M <= N)
and LAPACK's eigvalsh workspace (about as much): ``ESD_BYTES_PER_ELEMENT`` = 32 bytes per element
of the largest tensor, that is 8 times its float32 size. Memory, fit: the eigenvalues of one matrix
and about a dozen per-candidate arrays of the same length (the KS grid is evaluated in fixed-size
chunks): ``FIT_BYTES_PER_EIGENVALUE`` = 128 bytes per eigenvalue of the largest matrix. Both add
``BASE_MB`` for the interpreter and libraries (about 200 MB measured, with headroom).

Run time: the base start-up plus the work of every matrix at a deliberately slow rate (a
loaded, shared node): esd does N*M^2 (Gram matrix) + 10*M^3 (eigvalsh) flops per matrix at
``ESD_FLOPS_PER_MINUTE``; fit costs ``1 / FIT_EVALS_PER_MINUTE`` minutes per eigenvalue.
A Conv weight (out, in, *kernel) counts as prod(kernel) matrices of out x in, whatever ``conv2d``
is set to (an estimate; the slow rates leave room for other settings and the randomization ESD).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

BASE_MB = 1024
BASE_MINUTES = 10
ESD_BYTES_PER_ELEMENT = 32
FIT_BYTES_PER_EIGENVALUE = 128
ESD_FLOPS_PER_MINUTE = 3e10  # 0.5 GFLOP/s
FIT_EVALS_PER_MINUTE = 1e6


@dataclass(frozen=True)
class JobResources:
    mem_mb: int
    runtime: int  # minutes, as Snakemake's standard resource


DEFAULTS = {"esd": JobResources(mem_mb=4096, runtime=60), "fit": JobResources(mem_mb=2048, runtime=30)}


def _check_stage(stage: str) -> None:
    if stage not in DEFAULTS:
        raise ValueError(f"no resource estimate for stage {stage!r}; known stages: {sorted(DEFAULTS)}")


def layer_matrices(shape) -> tuple[int, int, int]:
    """(count, N, M) of the matrices a layer of this PyTorch weight shape is analysed as."""
    if len(shape) < 2:
        raise ValueError(f"a weight shape needs at least 2 dimensions, got {list(shape)}")
    out, inp, *kernel = (int(d) for d in shape)
    return math.prod(kernel), max(out, inp), min(out, inp)


def estimate(stage: str, shapes) -> JobResources:
    """Memory (MB) and run time (minutes) of the ``stage`` job of a model with these weight shapes."""
    _check_stage(stage)
    matrices = [layer_matrices(shape) for shape in shapes]
    if stage == "esd":
        largest = max((math.prod(shape) for shape in shapes), default=0)
        memory = largest * ESD_BYTES_PER_ELEMENT
        minutes = sum(c * (n * m * m + 10 * m**3) for c, n, m in matrices) / ESD_FLOPS_PER_MINUTE
    else:
        memory = max((m for _, _, m in matrices), default=0) * FIT_BYTES_PER_EIGENVALUE
        minutes = sum(c * m for c, _, m in matrices) / FIT_EVALS_PER_MINUTE
    return JobResources(mem_mb=BASE_MB + math.ceil(memory / 2**20), runtime=BASE_MINUTES + math.ceil(minutes))


def stage_resources(stage: str, layers_json: str | Path) -> JobResources:
    """The estimate for the model described by ``layers_json``, or the stage's defaults if that
    file does not exist yet."""
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
    return estimate(stage, shapes)
