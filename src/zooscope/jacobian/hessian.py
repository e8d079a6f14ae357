"""The Hessian spectral density of a model's mean loss by stochastic Lanczos quadrature (SLQ), the
optional last step of the Jacobian stage (docs/jacobian.md; config ``jacobian.hessian_probes``,
``jacobian.hessian_steps``): Hessian-vector products by forward-over-reverse differentiation,
never the Hessian itself, so it suits small models only by its cost in gradient passes."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from zooscope.layers import module_layers


@dataclass(frozen=True)
class HessianDensity:
    """Stochastic Lanczos quadrature of a Hessian's spectral density.

    nodes, weights: the quadrature (Ritz values of every probe's Lanczos run, each weighted by
    the squared first component of its eigenvector over the number of probes); the weights sum
    to one, so the density is sum_k weights_k delta(lambda - nodes_k).
    top: the largest Ritz values of the first probe's run, descending (extremal eigenvalues
    converge first in Lanczos; other probes' runs find the same ones again). trace: the Hutchinson estimate, mean of z^T H z over the Rademacher probes.
    """

    nodes: np.ndarray
    weights: np.ndarray
    top: np.ndarray
    trace: float
    dimension: int
    steps: int
    probes: int


def lanczos(matvec: Callable[[np.ndarray], np.ndarray], start: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Lanczos tridiagonalisation with full reorthogonalisation (float64), from unit ``start``.

    Returns the diagonal and off-diagonal of T (m x m, m <= steps: it stops early when the
    Krylov space is exhausted, beta ~ 0, in which case T's eigenvalues are exact).
    """
    dim = start.size
    steps = min(steps, dim)
    basis = np.zeros((steps, dim))
    alphas, betas = [], []
    q = start / np.linalg.norm(start)
    for k in range(steps):
        basis[k] = q
        w = matvec(q)
        alpha = float(q @ w)
        w = w - basis[: k + 1].T @ (basis[: k + 1] @ w)  # full reorthogonalisation (twice: stable)
        w = w - basis[: k + 1].T @ (basis[: k + 1] @ w)
        alphas.append(alpha)
        beta = float(np.linalg.norm(w))
        if k == steps - 1 or beta < 1e-10 * max(1.0, abs(alpha)):
            break
        betas.append(beta)
        q = w / beta
    return np.array(alphas), np.array(betas)


def slq_density(
    matvec: Callable[[np.ndarray], np.ndarray], dimension: int, *, steps: int = 40, probes: int = 4,
    top: int = 5, seed: int = 0,
) -> HessianDensity:
    """SLQ for a symmetric operator given by ``matvec`` (Ubaru, Chen & Saad 2017; Ghorbani et al.
    2019). Probes are Rademacher vectors z: z^T H z is Hutchinson's unbiased trace estimate, and
    it equals dimension * T_11 of the Lanczos run started at z / |z|, so it costs nothing extra."""
    rng = np.random.default_rng(seed)
    nodes, weights, traces = [], [], []
    used_steps = 0
    for _ in range(probes):
        z = rng.choice([-1.0, 1.0], size=dimension)
        alphas, betas = lanczos(matvec, z / math.sqrt(dimension), steps)
        used_steps = max(used_steps, alphas.size)
        theta, vectors = _tridiagonal_eigh(alphas, betas)
        nodes.append(theta)
        weights.append(vectors[0] ** 2 / probes)
        traces.append(dimension * alphas[0])
    nodes_all, weights_all = np.concatenate(nodes), np.concatenate(weights)
    order = np.argsort(nodes_all)
    return HessianDensity(
        nodes=nodes_all[order], weights=weights_all[order],
        top=np.sort(nodes[0])[::-1][:top], trace=float(np.mean(traces)),
        dimension=dimension, steps=used_steps, probes=probes,
    )


def _tridiagonal_eigh(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    return np.linalg.eigh(t)


def hessian_matvec(
    model: nn.Module, x: Tensor, y: Tensor, names: Sequence[str] | None = None,
) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """Hessian-vector products of the mean cross-entropy over (x, y) with respect to the
    parameters ``names`` (flattened, concatenated), by forward-over-reverse ``jvp(grad(loss))``;
    and the dimension. float64 in and out; the model runs in float32, in eval mode. Default: the
    parameters the analysed layers are taken from (zooscope.layers.module_layers), each once (a
    fused ``in_proj_weight`` whole: its three slices are the q, k and v layers)."""
    if names is None:
        names = [layer.weight.parameter for layer in module_layers(model)]
    names = list(dict.fromkeys(names))
    params = dict(model.named_parameters())
    constants = {**{k: v.detach() for k, v in params.items() if k not in names}, **dict(model.named_buffers())}
    weights = {name: params[name].detach() for name in names}
    shapes = [weights[name].shape for name in names]
    sizes = [weights[name].numel() for name in names]
    model.eval()

    def loss(w: dict[str, Tensor]) -> Tensor:
        return nn.functional.cross_entropy(functional_call(model, {**constants, **w}, (x,)), y)

    def matvec(v: np.ndarray) -> np.ndarray:
        pieces = torch.from_numpy(v).float().split(sizes)
        tangent = {name: piece.reshape(shape) for name, piece, shape in zip(names, pieces, shapes)}
        _, hv = torch.func.jvp(grad(loss), (weights,), (tangent,))
        return torch.cat([hv[name].reshape(-1) for name in names]).double().numpy()

    return matvec, sum(sizes)
