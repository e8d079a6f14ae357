"""The figures: what each draws, read back from its matplotlib artists (points, fitted lines,
panels, titles, labels) against values computed here independently; and that the files are
written as PNGs, atomically, under safe names."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import math

import matplotlib.colors
import matplotlib.image
import numpy as np
from scipy import stats
import pandas as pd
import pytest

import matplotlib.pyplot as plt

from zooscope.report.esd_plots import esd_figure, plot_esd
from zooscope.report.series_plots import (
    correlation_flow_figure,
    metric_vs_accuracy_figure,
    plot_correlation_flow,
    plot_metric_vs_accuracy,
    plot_series_regressions,
)
from zooscope.analysis.regression import regress

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    path = Path(path)
    assert path.is_file()
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    pixels = image.reshape(-1, image.shape[-1])
    assert len(np.unique(pixels, axis=0)) > 10, "blank single-colour image"
    # No temporary files left beside it.
    assert not list(path.parent.glob(".*.part"))


@pytest.fixture
def figures():
    """Figures the test builds, closed after it."""
    made = []
    yield made.append
    for fig in made:
        plt.close(fig)


def kept(fig, collect):
    collect(fig)
    return fig


def ccdf(values):
    """The expected points: the positive finite values sorted, P(value >= x) at each."""
    values = np.sort(np.asarray(values, dtype=float)[np.isfinite(values) & (np.asarray(values) > 0)])
    return values, 1.0 - np.arange(values.size) / values.size


def lines_by(ax, **wanted):
    """The Line2D artists of ``ax`` whose properties match ``wanted`` (e.g. color="tab:red")."""
    from matplotlib.colors import to_rgba

    found = []
    for line in ax.get_lines():
        if all((to_rgba(line.get_color()) == to_rgba(v)) if k == "color" else (getattr(line, f"get_{k}")() == v)
               for k, v in wanted.items()):
            found.append(line)
    return found


def pareto_spectrum(seed=0, n=400, alpha=3.0, xmin=1.0):
    rng = np.random.default_rng(seed)
    bulk = rng.uniform(0.05, xmin, n)
    tail = xmin * (1 - rng.random(n // 4)) ** (-1.0 / (alpha - 1.0))
    values = np.sort(np.concatenate([bulk, tail]))
    tail_values = values[values >= xmin]
    fitted_alpha = 1 + tail_values.size / np.sum(np.log(tail_values / xmin))
    fit = SimpleNamespace(alpha=fitted_alpha, xmin=xmin, xmax=values[-1], D=0.05,
                          num_pl_spikes=tail_values.size)
    return values, fit


def test_plot_esd_with_fit(tmp_path):
    values, fit = pareto_spectrum()
    out = plot_esd(values, fit, tmp_path / "esd" / "layer.png", title="model / layer 3")
    assert out == tmp_path / "esd" / "layer.png"
    assert_png(out)


def test_the_esd_figure_draws_the_ccdf_and_the_fitted_power_law(figures):
    values, fit = pareto_spectrum()
    fig = kept(esd_figure([(values, fit, "model / layer 3", None)]), figures)
    (ax,) = fig.axes
    assert ax.get_title() == "model / layer 3"
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert ax.get_xlabel().startswith("eigenvalue") and ax.get_ylabel() == "P(eigenvalue >= lambda)"
    (points,) = lines_by(ax, linestyle="None")
    x, y = ccdf(values)
    np.testing.assert_allclose(points.get_xdata(), x)
    np.testing.assert_allclose(points.get_ydata(), y)
    (line,) = lines_by(ax, color="tab:red", linestyle="-")
    xs, ys = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert xs[0] == pytest.approx(fit.xmin) and xs[-1] == pytest.approx(fit.xmax)
    # a power law of exponent alpha is a straight line of slope 1 - alpha in the CCDF, anchored at
    # the share of eigenvalues in the tail where the tail begins
    assert np.polyfit(np.log(xs), np.log(ys), 1)[0] == pytest.approx(1 - fit.alpha, rel=1e-9)
    assert ys[0] == pytest.approx(np.mean(values >= fit.xmin))
    (edge,) = lines_by(ax, color="tab:red", linestyle="--")
    assert list(edge.get_xdata()) == [fit.xmin, fit.xmin]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == [f"ESD, {values.size} eigenvalues (CCDF)",
                      f"power law fit: alpha = {fit.alpha:.3f}, D = 0.050\n{fit.num_pl_spikes} eigenvalues in the tail",
                      f"xmin = {fit.xmin:.4g}"]


def test_plot_esd_not_fitted_and_degenerate_values(tmp_path, figures):
    values, _ = pareto_spectrum(1, n=30)
    values = np.concatenate([values, [0.0, -1e-9, np.nan]])
    assert_png(plot_esd(values, None, tmp_path / "a.png", title="tiny layer",
                        reason="fewer than 50 eigenvalues"))
    (ax,) = kept(esd_figure([(values, None, "tiny layer", "fewer than 50 eigenvalues")]), figures).axes
    assert ax.get_title() == "tiny layer\nnot fitted: fewer than 50 eigenvalues"
    (points,) = ax.get_lines()  # the points only: no fitted line, no xmin
    np.testing.assert_allclose(points.get_xdata(), ccdf(values)[0])
    assert [t.get_text() for t in ax.texts] == ["3 eigenvalues <= 0 or not finite not shown"]
    assert_png(plot_esd([], None, tmp_path / "b.png", title="empty layer"))
    (ax,) = kept(esd_figure([([], None, "empty layer", None)]), figures).axes
    assert not ax.get_lines() and [t.get_text() for t in ax.texts] == ["no positive eigenvalues"]
    assert ax.get_title() == "empty layer\nnot fitted: no fit"


def test_a_mapping_fit_draws_the_same_line_as_an_object(figures):
    values, fit = pareto_spectrum(2)
    drawn = []
    for given in (fit, vars(fit)):
        (ax,) = kept(esd_figure([(values, given, "fit", None)]), figures).axes
        (line,) = lines_by(ax, color="tab:red", linestyle="-")
        drawn.append(np.asarray(line.get_ydata()))
    np.testing.assert_array_equal(*drawn)


def test_plot_correlation_flow(tmp_path, figures):
    rng = np.random.default_rng(0)
    layers = {}
    for name in ["vgg16", "vgg11", "vgg13"]:
        depth = np.repeat(np.arange(8), 3)  # three conv slices per depth
        layers[name] = pd.DataFrame({
            "depth": depth,
            "alpha": 3 + 0.2 * depth + rng.normal(0, 0.3, depth.size),
            "status": np.where(rng.random(depth.size) < 0.1, "skipped", "ok"),
        })
    layers["empty"] = pd.DataFrame({"depth": [0], "alpha": [np.nan], "status": ["skipped"]})
    assert_png(plot_correlation_flow(layers, tmp_path / "flow.png", series="VGG"))
    (ax,) = kept(correlation_flow_figure(layers, series="VGG"), figures).axes
    assert ax.get_title() == "Correlation flow: VGG"
    by_label = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "empty (no fitted layers)", "vgg11", "vgg13", "vgg16"]  # sorted, the empty model listed too
    assert len(by_label["empty (no fitted layers)"].get_xdata()) == 0
    for name in ["vgg11", "vgg13", "vgg16"]:
        frame = layers[name]
        depths = [d for d in range(8) if ((frame["depth"] == d) & (frame["status"] == "ok")).any()]
        means = [frame.loc[(frame["depth"] == d) & (frame["status"] == "ok"), "alpha"].mean() for d in depths]
        np.testing.assert_allclose(by_label[name].get_xdata(), np.array(depths) / 7)  # depth 0..7 onto 0..1
        np.testing.assert_allclose(by_label[name].get_ydata(), means)
    # the over- and under-trained thresholds
    levels = sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":")
    assert levels == [2.0, 6.0]


def test_plot_correlation_flow_missing_column(tmp_path):
    with pytest.raises(ValueError, match="'status'"):
        plot_correlation_flow({"m": pd.DataFrame({"depth": [0], "alpha": [3.0]})},
                              tmp_path / "x.png", series="s")
    assert not (tmp_path / "x.png").exists()


def small_zoo():
    return pd.DataFrame({
        "model": ["vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn"],
        "series": "VGG",
        "accuracy": [69.02, 69.93, 71.59, 72.38, 70.37],
        "alpha": [4.1, 3.9, 3.6, 3.4, 3.8],
        "log_norm": [2.2, 2.2, 2.2, 2.2, 2.2],  # constant: no fit
    })


def test_plot_metric_vs_accuracy(tmp_path, figures):
    zoo = small_zoo()
    reg = regress(zoo)
    row = reg[reg["metric"] == "alpha"].iloc[0]
    assert_png(plot_metric_vs_accuracy(zoo, row, tmp_path / "alpha.png", series="VGG", metric="alpha"))
    (ax,) = kept(metric_vs_accuracy_figure(zoo, row, series="VGG", metric="alpha"), figures).axes
    points, band = ax.collections
    np.testing.assert_allclose(points.get_offsets(), zoo[["alpha", "accuracy"]].to_numpy())
    assert [t.get_text() for t in ax.texts] == list(zoo["model"])
    # the line is the least-squares fit of the points, computed here with numpy
    slope, intercept = np.polyfit(zoo["alpha"], zoo["accuracy"], 1)
    r2 = np.corrcoef(zoo["alpha"], zoo["accuracy"])[0, 1] ** 2
    (line,) = ax.get_lines()
    xs, ys = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    np.testing.assert_allclose(ys, intercept + slope * xs, rtol=1e-9)
    assert xs[0] < zoo["alpha"].min() and xs[-1] > zoo["alpha"].max()  # over the range of the metric
    assert ax.get_title() == (f"VGG: accuracy vs alpha\nR^2 = {r2:.3f}, Kendall tau = {row['kendall_tau']:.3f} "
                              f"[{row['kendall_tau_lo']:.2f}, {row['kendall_tau_hi']:.2f}]")
    # the band is the 95 % confidence band of the line: t quantile times the closed-form standard error
    x, y, n = zoo["alpha"].to_numpy(), zoo["accuracy"].to_numpy(), len(zoo)
    s = np.sqrt(np.sum((y - intercept - slope * x) ** 2) / (n - 2))
    half = stats.t.ppf(0.975, n - 2) * s * np.sqrt(1 / n + (xs - x.mean()) ** 2 / np.sum((x - x.mean()) ** 2))
    vertices = band.get_paths()[0].vertices
    for xi, hi, lo in zip(xs, intercept + slope * xs + half, intercept + slope * xs - half):
        at = vertices[np.isclose(vertices[:, 0], xi)][:, 1]
        assert np.isclose(at, hi).any() and np.isclose(at, lo).any()
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("alpha", "reported accuracy")

    row = reg[reg["metric"] == "log_norm"].iloc[0]
    assert np.isnan(row["r2"])
    assert_png(plot_metric_vs_accuracy(zoo, row, tmp_path / "log_norm.png", series="VGG", metric="log_norm"))
    (ax,) = kept(metric_vs_accuracy_figure(zoo, row, series="VGG", metric="log_norm"), figures).axes
    assert not ax.get_lines() and len(ax.collections[0].get_offsets()) == len(zoo)
    assert ax.get_title().endswith("no fit (fewer than 3 models or constant metric)")


def test_plot_series_regressions_sanitises_names(tmp_path):
    zoo = small_zoo()
    zoo["series"] = "VGG (ImageNet)/v1"
    zoo = zoo.rename(columns={"alpha": "alpha hat*"})
    reg = regress(zoo)
    paths = plot_series_regressions(zoo, reg, tmp_path / "plots")
    assert paths == [tmp_path / "plots" / "VGG__ImageNet__v1" / "alpha_hat_.png",
                     tmp_path / "plots" / "VGG__ImageNet__v1" / "log_norm.png"]
    for path in paths:
        assert_png(path)


def test_plot_series_regressions_collision(tmp_path):
    zoo = small_zoo()
    other = small_zoo()
    zoo["series"], other["series"] = "a b", "a_b"
    both = pd.concat([zoo, other], ignore_index=True)
    with pytest.raises(ValueError, match="both be written"):
        plot_series_regressions(both, regress(both, ["alpha"]), tmp_path)
    assert not list(tmp_path.rglob("*.png"))


def test_plot_esd_with_package_fit(tmp_path, figures):
    from zooscope import fit_power_law

    rng = np.random.default_rng(0)
    eigenvalues = np.linalg.svd(rng.standard_t(3, size=(300, 150)), compute_uv=False) ** 2
    fit = fit_power_law(eigenvalues)
    assert_png(plot_esd(eigenvalues, fit, tmp_path / "real.png", title="student-t 300x150"))
    (ax,) = kept(esd_figure([(eigenvalues, fit, "student-t 300x150", None)]), figures).axes
    (line,) = lines_by(ax, color="tab:red", linestyle="-")
    xs, ys = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert (xs[0], xs[-1]) == (pytest.approx(fit.xmin), pytest.approx(eigenvalues.max()))
    assert np.polyfit(np.log(xs), np.log(ys), 1)[0] == pytest.approx(1 - fit.alpha, rel=1e-9)


def model_with_esds(tmp_path, matrices):
    from conftest import write_model_dir
    from zooscope.analysis.metrics import fit_layers
    from zooscope.config import EsdSettings, FitSettings
    from zooscope.spectra.esd import compute_model_esd, load_layer_eigenvalues

    model_dir = write_model_dir(tmp_path / "model", matrices)
    esd_dir = tmp_path / "esd"
    index = compute_model_esd(model_dir / "model.safetensors", model_dir / "layers.json", esd_dir,
                              EsdSettings(randomize=True))
    layers = fit_layers(index, lambda r, randomized=False: load_layer_eigenvalues(esd_dir, r, randomized=randomized),
                        FitSettings().without_uncertainty())
    return index, layers, esd_dir


def test_the_randomization_figure_draws_both_spectra_and_the_mp_fit(tmp_path, figures):
    from zooscope.report.esd_plots import plot_randomization, randomization_figure
    from zooscope.spectra.esd import load_layer_eigenvalues

    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 100)) + 2.0 * rng.standard_normal((300, 2)) @ rng.standard_normal((2, 100))
    index, _, esd_dir = model_with_esds(tmp_path, [("fc", "Linear", w)])
    values = load_layer_eigenvalues(esd_dir, index["layers"][0])[0]
    rand = load_layer_eigenvalues(esd_dir, index["layers"][0], randomized=True)[0]
    expected = np.linalg.eigvalsh(w.T @ w)  # what the figure is fed, to the float32 Gram route's 1e-6 of lambda_max
    np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-6 * expected.max())
    assert_png(plot_randomization(values, rand, (300, 100), tmp_path / "one.png", title="fc"))
    (ax,) = kept(randomization_figure([(values, rand, (300, 100), "fc")]), figures).axes
    assert ax.get_title() == "fc" and ax.get_xlabel() == "log10 eigenvalue"
    # two density histograms of log10 eigenvalues over shared bins: the ESD's, the shuffled one's
    bins = np.linspace(min(np.log10(values).min(), np.log10(rand).min()),
                       max(np.log10(values).max(), np.log10(rand).max()), 61)
    heights = np.array([bar.get_height() for bar in ax.patches]).reshape(2, 60)
    np.testing.assert_allclose(heights[0], np.histogram(np.log10(values), bins, density=True)[0])
    np.testing.assert_allclose(heights[1], np.histogram(np.log10(rand), bins, density=True)[0])
    # the MP density of the bulk, p(log10 x) = p(x) x ln 10 with the MP law of ratio 100 / 300,
    # ends at the bulk edge, where the dashed line is
    (curve,) = lines_by(ax, color="tab:red", linestyle="-")
    (edge,) = lines_by(ax, color="tab:red", linestyle="--")
    x = 10.0 ** np.asarray(curve.get_xdata())
    q = 100 / 300
    hi = 10.0 ** edge.get_xdata()[0]
    scale = hi / (1 + math.sqrt(q)) ** 2  # the fitted variance: the edge is scale (1 + sqrt q)^2
    lo = scale * (1 - math.sqrt(q)) ** 2
    assert x[0] == pytest.approx(lo, rel=1e-6) and x[-1] == pytest.approx(hi, rel=1e-6)  # the whole bulk
    inner = x[1:-1]  # (the ends sit a hair inside the edges, where the density's slope is infinite)
    mp = np.sqrt((hi - inner) * (inner - lo)) / (2 * math.pi * scale * q * inner)
    np.testing.assert_allclose(np.asarray(curve.get_ydata())[1:-1], mp * inner * math.log(10), rtol=1e-6)
    assert ax.get_legend().get_texts()[-1].get_text() == f"MP bulk edge = {hi:.4g}"
    # the fitted bulk lies where the ESD's bulk is: its edge below the two spikes of the rank-2 part
    assert np.sort(values)[-3] <= hi < np.sort(values)[-2]

    square = rng.standard_normal((80, 80))  # MP ratio 1: the bulk starts at 0
    (ax,) = kept(randomization_figure([(np.linalg.eigvalsh(square.T @ square), rand[:80], (80, 80), "square")]),
                 figures).axes
    (curve,) = lines_by(ax, color="tab:red", linestyle="-")
    assert np.all(np.isfinite(curve.get_ydata())) and np.all(np.asarray(curve.get_ydata()) >= 0)


def test_the_model_esds_one_figure_per_layer_with_a_panel_per_slice(tmp_path, figures):
    from zooscope.report.esd_plots import model_esd_figures, plot_model_esds

    rng = np.random.default_rng(1)
    kernel = rng.standard_t(3, size=(120, 80, 3, 3))  # 9 slices of 120 x 80
    index, layers, esd_dir = model_with_esds(tmp_path, [("conv", "Conv2d", kernel), ("fc", "Linear", kernel[:, :, 0, 0]),
                                                        ("tiny", "Linear", kernel[:20, :10, 0, 0])])
    assert (layers["layer"] == "conv").sum() == 9
    made = {name: kept(fig, figures) for name, fig in model_esd_figures(index, layers, esd_dir=esd_dir, model="m")}
    # the fitted matrices get both figures, the skipped one (10 eigenvalues) only its ESD
    assert sorted(made) == ["conv.png", "conv.rand.png", "fc.png", "fc.rand.png", "tiny.png"]
    conv = made["conv.png"]
    assert [ax.get_title() for ax in conv.axes] == [f"slice {i},{j}" for i in range(3) for j in range(3)]
    assert conv._suptitle.get_text() == "m: conv (Conv2d, 120 x 80), 9 slices"
    for i, ax in enumerate(conv.axes):  # each panel the CCDF of its slice's eigenvalues (the
        # published Methods scale a Conv2D slice by sqrt(kh kw / 2): its eigenvalues by 9 / 2)
        w = kernel[:, :, i // 3, i % 3]
        points = lines_by(ax, linestyle="None")[0]
        np.testing.assert_allclose(points.get_xdata(), ccdf(4.5 * np.linalg.eigvalsh(w.T @ w))[0], rtol=1e-5)
    assert len(made["conv.rand.png"].axes) == 9
    assert [ax.get_title() for ax in made["fc.png"].axes] == ["m: fc (Linear, 120 x 80)"]
    assert made["tiny.png"].axes[0].get_title().startswith("m: tiny (Linear, 20 x 10)\nnot fitted: ")
    # written: nine panels in a 3 x 3 grid of 4 x 3 inch panels, against one 6.4 x 4.8 inch figure
    from PIL import Image

    written = plot_model_esds(index, layers, esd_dir=esd_dir, out_dir=tmp_path / "plots", model="m")
    assert sorted(p.name for p in written) == sorted(made)
    for path in written:
        assert_png(path)
    width, height = Image.open(tmp_path / "plots" / "conv.png").size
    assert width == 3 * 4.0 * 110 and height == round((3 * 3.0 + 0.4) * 110)
    assert Image.open(tmp_path / "plots" / "fc.png").size == (round(6.4 * 110), round(4.8 * 110))


def test_relative_depth_maps_first_and_last_layer_to_0_and_1():
    from zooscope.report.series_plots import relative_depth

    np.testing.assert_allclose(relative_depth([2, 3, 4, 6]), [0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(relative_depth(pd.Series([5, 5])), [0.0, 0.0])
    out = relative_depth([0, None, 4])
    assert out[0] == 0.0 and np.isnan(out[1]) and out[2] == 1.0


def test_plot_noise_ladder(tmp_path, figures):
    from zooscope.analysis.discrimination import discrimination
    from zooscope.report.discrimination_plots import noise_ladder_figure, plot_noise_ladder

    models = pd.DataFrame({"model": ["c", "a", "b", "x"], "series": ["s", "s", "s", "t"],
                           "up": [3.0, 1.0, 2.0, 0.0], "swap": [3.0, 2.0, 1.0, 0.0], "flat": [1.0] * 4})
    noise = {"a": 0.0, "b": 0.5, "c": 1.0}
    table = discrimination(models, noise)
    assert_png(plot_noise_ladder(models, noise, table, tmp_path / "s.png", series="s"))
    fig = kept(noise_ladder_figure(models, noise, table, series="s"), figures)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    # separating first (up: tau +1), then partly (swap: 1 of 3 pairs discordant, tau 1/3 < 0.5: the
    # rest, like flat, whose tau is undefined); each panel the metric against the noise, sorted
    assert [ax.get_title() for ax in panels] == ["up\ntau = +1.00", "swap\ntau = +0.33", "flat\ntau: n/a"]
    expected = {"up": [1.0, 2.0, 3.0], "swap": [2.0, 1.0, 3.0], "flat": [1.0, 1.0, 1.0]}
    for ax in panels:
        (line,) = ax.get_lines()
        assert list(line.get_xdata()) == [0.0, 0.5, 1.0]
        assert list(line.get_ydata()) == expected[ax.get_title().split("\n")[0]]
    colors = [matplotlib.colors.to_hex(ax.get_lines()[0].get_color()) for ax in panels]
    assert colors == [matplotlib.colors.to_hex(c) for c in ("tab:green", "0.55", "0.55")]
    with pytest.raises(ValueError, match="'t'"):
        plot_noise_ladder(models, noise, table, tmp_path / "t.png", series="t")
