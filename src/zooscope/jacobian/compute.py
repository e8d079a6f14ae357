"""The data-dependent Jacobian spectrum (docs/jacobian.md; the Jacobian drafts of docs/method.md).

For a model and S samples (x_s, y_s), J_l is the (S x P_l) matrix whose row s is the gradient of
the cross-entropy loss of sample s with respect to layer l's weight matrix (P_l entries), taken in
``model.eval()`` so that batch norm and dropout do not make it depend on the batch.

The layers are those of the weight stages, under the same names (zooscope.layers.module_layers:
Linear, Conv1d, Conv2d, Embedding, transformers' Conv1D, the q/k/v projections of
MultiheadAttention; a tied weight once). A layer's matrix may be a view of a parameter: the
gradient is taken with respect to the parameter and then put through the same view
(``ModuleWeight.matrix``), so a fused attention projection gets the rows of the ``in_proj_weight``
gradient that are its slice (the gradient with respect to a slice is the slice of the gradient),
and a Conv1D weight, stored (in, out), the transposed gradient, laid out as the (out, in) matrix.

* ESD of J_l^T J_l. Its nonzero eigenvalues are those of the Gram matrix G_l = J_l J_l^T
  (S x S), which is what is accumulated and diagonalised: S is small (hundreds) while P_l can be
  millions. The spectrum is fitted exactly like a weight ESD (zooscope.analysis.metrics.spectrum_metrics:
  alpha, lambda_max, stable rank, ...), plus the numerical rank and an effective rank.
* diag(J_l^T J_l): per parameter, the sum over samples of its squared per-sample gradient (the
  empirical Fisher diagonal). It is heavy tailed too (the Jacobian Spectral Density draft, "JJ Diagonal Power law / Max
  Element"): its own power-law fit and its largest element.
* Optional: the input-output Jacobian d(logits)/d(input) per sample, its squared singular values
  pooled over samples into one ESD; and the Hessian spectral density of the mean loss by
  stochastic Lanczos quadrature (SLQ), for small models (zooscope.jacobian.hessian).

Memory. Per-sample gradients come from ``torch.func`` (``vmap(grad(...))`` over a batch of B
samples), float32, B x P floats for the model's analysed weights (P = sum_l P_l). The Gram needs
every pair of samples, so two routes give the same G_l:

* ``store`` (when 4 S P bytes fit ``memory_budget``): J_l is kept whole in float32, 4 P bytes per
  sample, one gradient pass over the data; G_l = J_l J_l^T accumulated in float64 over slices
  of 8192 columns (so the float64 copy never exceeds 64 KiB per sample).
* ``blocks`` (otherwise): the S samples are cut into nb = ceil(S/B) batches and G_l is filled
  block by block, the gradients of batch i held while those of batches j >= i are recomputed:
  memory 12 B P bytes whatever S (batch i in float64, batch j in float32), time nb (nb + 1) / 2
  gradient passes instead of nb.

Either way the Grams cost 8 S^2 bytes per layer and diag(J^T J) 8 P bytes (float64).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import save_file
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap

from zooscope.config import FitSettings, JacobianSettings
from zooscope.io import atomic_path
from zooscope.layers import ModuleLayer, module_layers
from zooscope.analysis.metrics import spectrum_metrics
from zooscope.fits.powerlaw import fit_power_law
from zooscope.jacobian.hessian import hessian_matvec, slq_density

log = logging.getLogger(__name__)

# The defaults of config jacobian: (zooscope.config.JacobianSettings).
DEFAULT_BATCH_SIZE = JacobianSettings.batch_size
DEFAULT_MEMORY_BUDGET = JacobianSettings().memory_budget  # bytes of float32 J kept whole before blocks
_GRAM_COLUMNS = 8192  # columns of J converted to float64 at a time (8 S bytes each)


# ----------------------------------------------------------------------------- per-sample gradients


def per_sample_gradients(model: nn.Module, x: Tensor, y: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """{parameter name: (B, *its shape) float32}: entry s is d loss(x_s, y_s) / d parameter.

    ``torch.func``: the loss of one sample is a function of the named weights (the other
    parameters and the buffers are constants), ``vmap(grad(...))`` evaluates it for the batch in
    one vectorised backward pass. The caller puts the model in eval mode.
    """
    params = dict(model.named_parameters())
    constants = {**{k: v.detach() for k, v in params.items() if k not in names}, **dict(model.named_buffers())}
    weights = {name: params[name].detach() for name in names}

    def loss(w: dict[str, Tensor], xs: Tensor, ys: Tensor) -> Tensor:
        logits = functional_call(model, {**constants, **w}, (xs.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, ys.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(weights, x, y)
    return {name: grads[name] for name in names}


def layer_gradients(model: nn.Module, x: Tensor, y: Tensor, layers: Sequence[ModuleLayer]) -> dict[str, Tensor]:
    """{layer name: (B, P_layer) float32}: row s is d loss(x_s, y_s) / d (the layer's matrix),
    flattened in the matrix's (row-major) order. One gradient per parameter, then each layer's
    view of it (module docstring)."""
    parameters = list(dict.fromkeys(layer.weight.parameter for layer in layers))
    grads = per_sample_gradients(model, x, y, parameters)
    out = {}
    for layer in layers:
        g = grads[layer.weight.parameter]
        if layer.weight.derived:
            g = vmap(layer.weight.matrix)(g)
        out[layer.name] = g.reshape(len(x), -1)
    return out


@dataclass(frozen=True)
class JacobianGram:
    """What one pass over the data leaves per layer (keyed by layer name): G = J J^T (S x S) and
    diag(J^T J) (P,), both float64; ``route`` is "store" or "blocks" (module docstring),
    ``passes`` the number of batched gradient evaluations it took."""

    gram: dict[str, np.ndarray]
    diag: dict[str, np.ndarray]
    route: str
    passes: int


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def jacobian_grams(
    model: nn.Module, x: Tensor, y: Tensor, layers: Sequence[ModuleLayer] | None = None, *,
    batch_size: int = DEFAULT_BATCH_SIZE, memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> JacobianGram:
    """Accumulate G_l = J_l J_l^T and diag(J_l^T J_l) for every layer of ``layers``
    (default: every analysed layer, zooscope.layers.module_layers), choosing the store or blocks
    route by ``memory_budget``.
    """
    layers = list(module_layers(model) if layers is None else layers)
    if not layers:
        raise ValueError("the model has no analysed weights (Linear, Conv, Embedding, attention) to differentiate")
    params = dict(model.named_parameters())
    sizes = {layer.name: layer.weight.matrix(params[layer.weight.parameter]).numel() for layer in layers}
    names = list(sizes)
    n = len(x)
    batches = _batches(n, batch_size)
    was_training = model.training
    model.eval()
    try:
        diag = {name: np.zeros(sizes[name]) for name in names}
        gram = {name: np.zeros((n, n)) for name in names}

        def grads(batch: slice) -> dict[str, Tensor]:
            return layer_gradients(model, x[batch], y[batch], layers)

        if 4 * n * sum(sizes.values()) <= memory_budget:
            route, passes = "store", len(batches)
            jac = {name: torch.empty(n, sizes[name]) for name in names}
            for batch in batches:
                for name, g in grads(batch).items():
                    jac[name][batch] = g
                    diag[name] += (g.double() ** 2).sum(0).numpy()
            for name in names:
                j = jac.pop(name)
                for cols in _batches(sizes[name], _GRAM_COLUMNS):  # float64 a slice at a time
                    part = j[:, cols].double()
                    gram[name] += (part @ part.T).numpy()
                del j
        else:
            route, passes = "blocks", 0
            for i, rows in enumerate(batches):
                gi = {name: g.double() for name, g in grads(rows).items()}
                passes += 1
                for name, g in gi.items():
                    diag[name] += (g * g).sum(0).numpy()
                    gram[name][rows, rows] = (g @ g.T).numpy()
                for cols in batches[i + 1:]:
                    gj = grads(cols)
                    passes += 1
                    for name, g in gj.items():
                        block = (gi[name] @ g.double().T).numpy()
                        gram[name][rows, cols] = block
                        gram[name][cols, rows] = block.T
    finally:
        model.train(was_training)
    return JacobianGram(gram=gram, diag=diag, route=route, passes=passes)


# ----------------------------------------------------------------------------- spectra and metrics


def nonzero_tolerance(lambda_max: float, size: int) -> float:
    """Eigenvalues of an S x S Gram at or below ``S * eps64 * lambda_max`` are numerically zero:
    that is the size of the rounding error of a symmetric eigensolver on it, so nothing smaller
    can be told apart from a true zero (a rank-deficient J)."""
    return float(size) * np.finfo(np.float64).eps * max(float(lambda_max), 0.0)


def gram_eigenvalues(gram: np.ndarray) -> np.ndarray:
    """The nonzero spectrum of J^T J from G = J J^T: eigenvalues of G above
    :func:`nonzero_tolerance`, ascending."""
    values = np.linalg.eigvalsh(np.asarray(gram, dtype=np.float64))
    if values.size == 0:
        return values
    return values[values > nonzero_tolerance(values[-1], len(values))]


def effective_rank(values: np.ndarray) -> float:
    """exp of the Shannon entropy of p_i = lambda_i / sum lambda (Roy & Vetterli 2007).

    Between 1 (one eigenvalue carries everything) and the number of nonzero eigenvalues (all
    equal); unlike a thresholded count it needs no tolerance and moves continuously as the
    spectrum concentrates. NaN for an all-zero spectrum.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[values > 0]
    if values.size == 0:
        return math.nan
    p = values / values.sum()
    return float(math.exp(-np.sum(p * np.log(p))))


# Columns of results/jacobian/{model}/layers.tsv, in order.
JACOBIAN_LAYER_COLUMNS = (
    "layer", "num_params", "num_samples", "rank", "effective_rank", "lambda_max", "log_norm",
    "log_spectral_norm", "stable_rank", "alpha", "xmin", "D", "num_pl_spikes", "alpha_weighted",
    "diag_max", "diag_alpha", "diag_xmin", "diag_D", "diag_num_pl_spikes", "status", "reason",
)


def spectrum_row(values: np.ndarray, *, min_evals: int = FitSettings.min_evals) -> dict:
    """Fit metrics of a nonzero Jacobian spectrum, as a weight ESD's (zooscope.analysis.metrics).

    The fit floor is relative (``nonzero_tolerance``), not the weight ESD's absolute 1e-5:
    gradients of a well-fitted model are small, and their scale says nothing about the shape.
    """
    values = np.sort(np.asarray(values, dtype=np.float64))
    floor = nonzero_tolerance(values[-1], values.size) if values.size else 0.0
    # point estimates only: the Jacobian tables have no interval or goodness-of-fit columns
    row = spectrum_metrics(values, FitSettings(min_evals=min_evals, floor=floor).without_uncertainty())
    keep = ("num_evals", "lambda_max", "log_norm", "log_spectral_norm", "stable_rank", "alpha", "xmin",
            "D", "num_pl_spikes", "alpha_weighted", "status", "reason")
    out = {key: row.get(key, math.nan) for key in keep}
    out["rank"] = out.pop("num_evals")
    out["effective_rank"] = effective_rank(values)
    return out


def diagonal_row(diag: np.ndarray) -> dict:
    """The heavy tail of diag(J^T J): its largest element and its own power-law fit, over the
    elements above ``eps64 * max`` (weights that never get a gradient, e.g. of always-zero
    inputs, are exact zeros and are no part of a tail)."""
    diag = np.asarray(diag, dtype=np.float64)
    peak = float(diag.max()) if diag.size else math.nan
    row = {"diag_max": peak, "diag_alpha": math.nan, "diag_xmin": math.nan, "diag_D": math.nan,
           "diag_num_pl_spikes": math.nan}
    if not peak > 0:
        return row
    try:
        fit = fit_power_law(diag, floor=np.finfo(np.float64).eps * peak)
    except ValueError:
        return row
    row.update(diag_alpha=fit.alpha, diag_xmin=fit.xmin, diag_D=fit.D, diag_num_pl_spikes=fit.num_pl_spikes)
    return row


def jacobian_layer_rows(grams: JacobianGram, *, min_evals: int = FitSettings.min_evals) -> list[dict]:
    """One row per layer (JACOBIAN_LAYER_COLUMNS): the Gram-spectrum fit and the diagonal's."""
    rows = []
    for name, gram in grams.gram.items():
        rows.append({
            "layer": name,
            "num_params": int(grams.diag[name].size),
            "num_samples": int(len(gram)),
            **spectrum_row(gram_eigenvalues(gram), min_evals=min_evals),
            **diagonal_row(grams.diag[name]),
        })
    return [{column: row.get(column, math.nan) for column in JACOBIAN_LAYER_COLUMNS} for row in rows]


# ----------------------------------------------------------------------------- input-output Jacobian


def input_output_singular_values(model: nn.Module, x: Tensor, *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Singular values of d(logits)/d(input) of every sample, concatenated (float64, unsorted).

    ``vmap(jacrev(f))``: f maps one input (its own shape) to the logits; each sample's Jacobian
    is reshaped to (outputs x input elements). Their squares pooled are the ESD to fit.
    """
    params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    params = {k: v.detach() for k, v in params.items()}

    def logits(xs: Tensor) -> Tensor:
        return functional_call(model, params, (xs.unsqueeze(0),))[0]

    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in _batches(len(x), batch_size):
            jac = vmap(jacrev(logits))(x[batch])
            jac = jac.reshape(jac.shape[0], jac.shape[1], -1).double()
            out.append(torch.linalg.svdvals(jac).reshape(-1).numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


# ----------------------------------------------------------------------------- one model


# Layer columns averaged into the model summary (over rows with status "ok"), as jac_{column}.
JACOBIAN_SUMMARY_COLUMNS = (
    "rank", "effective_rank", "lambda_max", "log_spectral_norm", "log_norm", "stable_rank", "alpha",
    "alpha_weighted", "diag_max", "diag_alpha",
)
# Every per-model column the stage adds to results/{zoo}/models.tsv, in order.
JACOBIAN_METRICS = (
    *(f"jac_{column}" for column in JACOBIAN_SUMMARY_COLUMNS),
    "jac_io_alpha", "jac_io_log_spectral_norm", "jac_io_stable_rank", "jac_io_effective_rank",
    "jac_hessian_top", "jac_hessian_trace",
)


@dataclass(frozen=True)
class ModelJacobian:
    """The stage's result for one model: one row per layer, the model's jac_ metrics, and its
    mean loss and accuracy (percent) on the samples. The last two are context, not metrics:
    on labelled test data they are the quality that the metrics are meant to predict.
    ``spectra`` holds the values behind the metrics, for plots (:func:`spectra_arrays`)."""

    layers: pd.DataFrame
    metrics: dict
    route: str
    passes: int
    loss: float
    accuracy: float
    spectra: dict[str, np.ndarray]


def model_jacobian(model: nn.Module, x: Tensor, y: Tensor, settings: JacobianSettings = JacobianSettings(), *,
                   min_evals: int = FitSettings.min_evals) -> ModelJacobian:
    """Every Jacobian metric of ``model`` on (x, y): per layer, and summarised per model.

    ``settings``: config ``jacobian:`` (batch size and memory budget of the per-sample gradients,
    the input-output Jacobian on/off, the Hessian SLQ's probes and steps); ``min_evals``: config
    ``fit.min_evals``, the fewest eigenvalues a spectrum's power law is fitted to.

    Each step's CPU time goes to the log (the cost figures of docs/jacobian.md come from such logs)."""
    model.eval()
    clock = time.process_time()

    def step(name: str) -> None:
        nonlocal clock
        now = time.process_time()
        log.info("%s: %.2f CPU s (%d samples)", name, now - clock, len(x))
        clock = now

    grams = jacobian_grams(model, x, y, batch_size=settings.batch_size, memory_budget=settings.memory_budget)
    step(f"per-sample gradients and Grams, {grams.route} route")
    layers = pd.DataFrame(jacobian_layer_rows(grams, min_evals=min_evals), columns=list(JACOBIAN_LAYER_COLUMNS))
    spectra = {}
    for layer, gram in grams.gram.items():
        spectra[f"gram/{layer}"] = gram_eigenvalues(gram)
        spectra[f"diag/{layer}"] = np.sort(grams.diag[layer])
    step("eigenvalues and fits")
    fitted = layers[layers["status"] == "ok"]
    metrics = {f"jac_{c}": (float(fitted[c].astype(float).mean()) if len(fitted) else math.nan)
               for c in JACOBIAN_SUMMARY_COLUMNS}
    metrics.update(dict.fromkeys(JACOBIAN_METRICS[len(JACOBIAN_SUMMARY_COLUMNS):], math.nan))
    if settings.input_output:
        spectra["io"] = np.sort(input_output_singular_values(model, x, batch_size=settings.batch_size) ** 2)
        row = spectrum_row(spectra["io"], min_evals=min_evals)
        metrics.update({f"jac_io_{key}": row[key] for key in ("alpha", "log_spectral_norm", "stable_rank", "effective_rank")})
        step("input-output Jacobian")
    if settings.hessian_probes > 0:
        matvec, dim = hessian_matvec(model, x, y)
        density = slq_density(matvec, dim, steps=settings.hessian_steps, probes=settings.hessian_probes)
        metrics.update(jac_hessian_top=float(density.top[0]), jac_hessian_trace=density.trace)
        spectra.update({"hessian/nodes": density.nodes, "hessian/weights": density.weights})
        step(f"Hessian SLQ, {settings.hessian_probes} probes x {density.steps} steps")
    with torch.no_grad():
        logits = model(x)
    for column in ("num_params", "num_samples", "rank", "num_pl_spikes", "diag_num_pl_spikes"):
        layers[column] = layers[column].astype("Int64")
    return ModelJacobian(layers=layers, metrics=metrics, route=grams.route, passes=grams.passes,
                         loss=float(nn.functional.cross_entropy(logits, y)),
                         accuracy=100.0 * float((logits.argmax(1) == y).double().mean()),
                         spectra=spectra)


# ----------------------------------------------------------------------------- spectra file
# results/jacobian/{model}/spectra.safetensors: float64 arrays named "gram/{layer}" (the nonzero
# Gram eigenvalues, ascending), "diag/{layer}" (diag(J^T J), ascending), "io" (squared input-output
# singular values, ascending; with jacobian.input_output) and "hessian/nodes", "hessian/weights"
# (the SLQ quadrature; with hessian_probes > 0). safetensors: no pickles, and the same arrays give
# the same bytes (its header is sorted), so reruns leave identical files. Read them with
# safetensors.numpy.load_file (the plot job does, without importing torch).


def write_spectra(path, spectra: dict[str, np.ndarray]) -> None:
    """Write ``spectra`` (name -> 1-D array) as float64 safetensors, atomically."""
    with atomic_path(path) as tmp:
        save_file({name: np.ascontiguousarray(values, dtype=np.float64) for name, values in spectra.items()}, str(tmp))
