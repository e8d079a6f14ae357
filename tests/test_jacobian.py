"""zooscope.jacobian.compute against independent constructions: explicit per-sample loops, explicit
Hessians, and closed forms."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from zooscope.config import JacobianSettings
from zooscope.jacobian import compute as jacobian
from zooscope.jacobian import hessian


def tiny_mlp(seed=0, inputs=5, hidden=4, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, classes))


def tiny_data(n=11, inputs=5, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, inputs, generator=g), torch.randint(classes, (n,), generator=g)


def explicit_jacobian(model, x, y, name):
    """J (samples x parameters) built one sample at a time with torch.autograd.grad."""
    weight = dict(model.named_parameters())[name]
    rows = []
    for xs, ys in zip(x, y):
        loss = nn.functional.cross_entropy(model(xs[None]), ys[None])
        (g,) = torch.autograd.grad(loss, weight)
        rows.append(g.reshape(-1).double())
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("budget", [jacobian.DEFAULT_MEMORY_BUDGET, 0])  # store route, blocks route
def test_gram_spectrum_is_the_nonzero_spectrum_of_explicit_jtj(budget):
    model, (x, y) = tiny_mlp(), tiny_data()
    grams = jacobian.jacobian_grams(model, x, y, batch_size=4, memory_budget=budget)
    assert grams.route == ("store" if budget else "blocks")
    assert grams.passes == (3 if budget else 3 * 4 // 2)  # 11 samples in batches of 4: 3 batches
    assert list(grams.gram) == ["0", "2"]  # the layer names of layers.json
    for layer in ("0", "2"):
        j = explicit_jacobian(model, x, y, f"{layer}.weight")
        explicit = np.linalg.eigvalsh(j.T @ j)
        explicit = explicit[explicit > 1e-9 * explicit[-1]]
        np.testing.assert_allclose(jacobian.gram_eigenvalues(grams.gram[layer]), explicit, rtol=1e-5, atol=1e-9)
        # float32 gradients: entries agree to float32 precision of the largest one
        np.testing.assert_allclose(grams.gram[layer], j @ j.T, rtol=1e-5, atol=1e-6 * np.abs(j @ j.T).max())
        np.testing.assert_allclose(grams.diag[layer], (j**2).sum(axis=0), rtol=1e-5, atol=1e-12)


def test_gram_rank_is_at_most_min_of_samples_and_parameters():
    # 11 samples, layer 2 has 4*3 = 12 weights, but the per-sample gradient of a Linear weight is
    # an outer product (dL/dz) a^T with dL/dz summing to 0 over the 3 classes: rank <= 2 * 4 = 8.
    model, (x, y) = tiny_mlp(), tiny_data()
    grams = jacobian.jacobian_grams(model, x, y)
    assert jacobian.gram_eigenvalues(grams.gram["2"]).size == 8


def test_effective_rank_closed_forms():
    assert jacobian.effective_rank(np.full(7, 3.0)) == pytest.approx(7.0)
    assert jacobian.effective_rank(np.array([0.0, 0.0, 5.0])) == pytest.approx(1.0)
    # p = (1/2, 1/4, 1/4): entropy 1.5 ln 2, so exp(H) = 2^1.5
    assert jacobian.effective_rank(np.array([2.0, 1.0, 1.0])) == pytest.approx(2**1.5)
    assert math.isnan(jacobian.effective_rank(np.zeros(3)))


def test_diagonal_row_of_a_pareto_sample():
    rng = np.random.default_rng(0)
    diag = np.concatenate([np.zeros(100), 1.0 + rng.pareto(1.5, size=4000)])  # density exponent 2.5
    row = jacobian.diagonal_row(diag)
    assert row["diag_max"] == diag.max()
    assert row["diag_alpha"] == pytest.approx(2.5, abs=0.15)
    assert row["diag_num_pl_spikes"] <= 4000


def test_orthogonal_deep_linear_network_has_unit_input_output_singular_values():
    torch.manual_seed(0)
    layers = [nn.Linear(6, 6, bias=False) for _ in range(4)]
    for layer in layers:
        nn.init.orthogonal_(layer.weight)
    model = nn.Sequential(*layers)
    x = torch.randn(9, 6)
    values = jacobian.input_output_singular_values(model, x, batch_size=4)
    assert values.shape == (9 * 6,)
    np.testing.assert_allclose(values, 1.0, atol=1e-5)


def test_input_output_singular_values_of_a_linear_map():
    # one Linear layer: every sample's Jacobian is W itself
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    values = jacobian.input_output_singular_values(model, torch.randn(4, 5))
    expected = np.linalg.svd(model.weight.detach().double().numpy(), compute_uv=False)
    np.testing.assert_allclose(values.reshape(4, 3), np.tile(expected, (4, 1)), rtol=1e-6)


def test_slq_on_an_explicit_diagonal_matrix():
    d = np.array([5.0, 3.0, 2.0, 1.0, 1.0, -0.5, 0.25])
    density = hessian.slq_density(lambda v: d * v, d.size, steps=d.size, probes=3)
    assert density.weights.sum() == pytest.approx(1.0)
    # Rademacher probes: z^T D z = sum d_i z_i^2 = trace(D) exactly
    assert density.trace == pytest.approx(d.sum())
    # a full Krylov space: the Ritz values are the distinct eigenvalues
    assert density.top[0] == pytest.approx(5.0)
    np.testing.assert_allclose(np.unique(density.nodes.round(8)), np.unique(d))
    # quadrature of x -> x with weights from z/|z|: mean of z^T D z / n = trace / n
    assert density.nodes @ density.weights == pytest.approx(d.sum() / d.size)


def test_slq_top_ritz_value_matches_explicit_hessian_of_a_tiny_model():
    model, (x, y) = tiny_mlp(), tiny_data(n=32)
    reference = tiny_mlp().double().eval()  # the same weights, in float64

    def loss(a, b):
        params = {"0.weight": a, "2.weight": b, "0.bias": reference[0].bias, "2.bias": reference[2].bias}
        return nn.functional.cross_entropy(torch.func.functional_call(reference, params, (x.double(),)), y)

    w1, w2 = reference[0].weight.detach(), reference[2].weight.detach()
    blocks = torch.autograd.functional.hessian(loss, (w1, w2))
    # assemble the (32 x 32) Hessian from its blocks, parameters flattened in order w1, w2
    sizes = (w1.numel(), w2.numel())
    h = np.block([[blocks[i][j].reshape(sizes[i], sizes[j]).numpy() for j in range(2)] for i in range(2)])
    matvec, dim = hessian.hessian_matvec(model, x, y)
    assert dim == sum(sizes)
    density = hessian.slq_density(matvec, dim, steps=20, probes=2)
    assert density.weights.sum() == pytest.approx(1.0)
    top = np.linalg.eigvalsh(h)[-1]
    assert density.top[0] == pytest.approx(top, rel=1e-3)
    v = np.random.default_rng(0).standard_normal(dim)
    np.testing.assert_allclose(matvec(v), h @ v, rtol=1e-3, atol=1e-5)


def test_layer_rows_have_every_column():
    model, (x, y) = tiny_mlp(hidden=16), tiny_data(n=60)
    rows = jacobian.jacobian_layer_rows(jacobian.jacobian_grams(model, x, y), min_evals=5)
    assert [row["layer"] for row in rows] == ["0", "2"]
    for row in rows:
        assert tuple(row) == jacobian.JACOBIAN_LAYER_COLUMNS
        assert row["num_samples"] == 60
        assert 1.0 <= row["effective_rank"] <= row["rank"] <= 60


def test_model_jacobian_gives_every_metric():
    model, (x, y) = tiny_mlp(hidden=16), tiny_data(n=60)
    settings = JacobianSettings(hessian_steps=5, hessian_probes=1)
    result = jacobian.model_jacobian(model, x, y, settings, min_evals=5)
    assert tuple(result.metrics) == jacobian.JACOBIAN_METRICS
    assert all(math.isfinite(value) for value in result.metrics.values())
    assert list(result.layers.columns) == list(jacobian.JACOBIAN_LAYER_COLUMNS)
    # the summary is the plain mean over the fitted layers
    assert result.metrics["jac_rank"] == pytest.approx(result.layers["rank"].astype(float).mean())
    # loss and accuracy on the samples, from their definitions
    logits = model(x).detach()
    assert result.loss == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-6)
    assert result.accuracy == pytest.approx(100.0 * float((logits.argmax(1) == y).float().mean()))


def test_conv_layers_gram_matches_explicit_jacobian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(7, 1, 6, 6, generator=g), torch.randint(3, (7,), generator=g)
    grams = jacobian.jacobian_grams(model, x, y, batch_size=3)
    assert list(grams.gram) == ["0", "3"]
    j = explicit_jacobian(model, x, y, "0.weight")
    np.testing.assert_allclose(grams.gram["0"], j @ j.T, rtol=1e-5, atol=1e-6 * np.abs(j @ j.T).max())
    np.testing.assert_allclose(grams.diag["0"], (j**2).sum(axis=0), rtol=1e-5, atol=1e-12)


def test_model_jacobian_spectra_are_the_values_behind_the_metrics(tmp_path):
    model, (x, y) = tiny_mlp(hidden=16), tiny_data(n=60)
    settings = JacobianSettings(hessian_steps=5, hessian_probes=1)
    result = jacobian.model_jacobian(model, x, y, settings, min_evals=5)
    spectra = result.spectra
    assert sorted(spectra) == ["diag/0", "diag/2", "gram/0", "gram/2", "hessian/nodes", "hessian/weights", "io"]
    for name, layer in (("0.weight", "0"), ("2.weight", "2")):
        j = explicit_jacobian(model, x, y, name)
        np.testing.assert_allclose(spectra[f"diag/{layer}"], np.sort((j**2).sum(axis=0)), rtol=1e-5, atol=1e-12)
        explicit = np.linalg.eigvalsh(j @ j.T)
        top = spectra[f"gram/{layer}"]
        np.testing.assert_allclose(top, explicit[-top.size:], rtol=1e-4, atol=1e-9 * explicit[-1])
        assert top.size == result.layers.set_index("layer").loc[layer, "rank"]
    # input-output: squared singular values of each sample's d(logits)/d(input), from autograd
    expected = np.concatenate([
        np.linalg.svd(torch.autograd.functional.jacobian(model, xs).double().numpy(), compute_uv=False) ** 2
        for xs in x
    ])
    np.testing.assert_allclose(spectra["io"], np.sort(expected), rtol=1e-5, atol=1e-12)
    assert spectra["hessian/weights"].sum() == pytest.approx(1.0)


def test_spectra_file_round_trip_is_byte_identical(tmp_path):
    from safetensors.numpy import load_file

    spectra = {"gram/a": np.array([1.0, 2.5]), "io": np.arange(3, dtype=np.float32), "diag/b": np.zeros(0)}
    jacobian.write_spectra(tmp_path / "one.safetensors", spectra)
    jacobian.write_spectra(tmp_path / "two.safetensors", dict(reversed(spectra.items())))
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()
    loaded = load_file(tmp_path / "one.safetensors")
    assert loaded.keys() == spectra.keys() and all(v.dtype == np.float64 for v in loaded.values())
    for key, value in spectra.items():
        np.testing.assert_array_equal(loaded[key], value)


class EveryLayerKind(nn.Module):
    """An Embedding, a fused-attention MultiheadAttention, transformers' Conv1D (stored (in, out)),
    and a tied Linear head: every kind of analysed weight zooscope.layers knows."""

    def __init__(self):
        from transformers.pytorch_utils import Conv1D

        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(7, 6)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.proj = Conv1D(5, 6)  # weight (6, 5): in 6, out 5
        self.head = nn.Linear(15, 4)
        self.unembed = nn.Linear(6, 7, bias=False)
        self.unembed.weight = self.embed.weight  # tied: one layer, as in layers.json

    def forward(self, tokens):
        h = self.embed(tokens)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        logits = self.head(torch.tanh(self.proj(h)).flatten(1))
        return logits + self.unembed(h).mean(1)[:, :4]


def explicit_rows(model, x, y, parameter, view):
    """J of one layer, one sample at a time: autograd's gradient of the whole parameter, put
    through ``view`` (the layer's matrix as a function of the parameter), flattened."""
    weight = dict(model.named_parameters())[parameter]
    rows = []
    for xs, ys in zip(x, y):
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(xs[None]), ys[None]), weight)
        rows.append(view(g).reshape(-1).double())
    return torch.stack(rows).numpy()


def test_the_jacobian_layers_are_the_weight_stages_layers_named_the_same():
    from zooscope.layers import layers_from_module

    model = EveryLayerKind().eval()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randint(7, (9, 3), generator=g), torch.randint(4, (9,), generator=g)
    grams = jacobian.jacobian_grams(model, x, y, batch_size=4)
    assert list(grams.gram) == [layer.name for layer in layers_from_module(model).layers] == [
        "embed", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "proj", "head"]
    # q, k, v: rows 0-5, 6-11, 12-17 of the in_proj_weight gradient; Conv1D: its gradient transposed
    views = {"embed": ("embed.weight", lambda w: w), "attn.out_proj": ("attn.out_proj.weight", lambda w: w),
             "proj": ("proj.weight", lambda w: w.T), "head": ("head.weight", lambda w: w)}
    views.update({f"attn.{name}_proj": ("attn.in_proj_weight", lambda w, i=i: w[6 * i: 6 * (i + 1)])
                  for i, name in enumerate("qkv")})
    for layer, (parameter, view) in views.items():
        j = explicit_rows(model, x, y, parameter, view)
        assert grams.diag[layer].shape == (j.shape[1],)
        np.testing.assert_allclose(grams.gram[layer], j @ j.T, rtol=1e-5, atol=1e-6 * np.abs(j @ j.T).max())
        np.testing.assert_allclose(grams.diag[layer], (j**2).sum(axis=0), rtol=1e-5, atol=1e-7 * (j**2).sum(0).max())
