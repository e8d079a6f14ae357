"""Every plot function writes a valid, non-blank PNG."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from zooscope.report.plots import (
    plot_correlation_flow,
    plot_esd,
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


def test_plot_esd_not_fitted_and_degenerate_values(tmp_path):
    values, _ = pareto_spectrum(1, n=30)
    values = np.concatenate([values, [0.0, -1e-9, np.nan]])
    assert_png(plot_esd(values, None, tmp_path / "a.png", title="tiny layer",
                        reason="fewer than 50 eigenvalues"))
    assert_png(plot_esd([], None, tmp_path / "b.png", title="empty layer"))


def test_plot_esd_accepts_mapping_fit(tmp_path):
    values, fit = pareto_spectrum(2)
    assert_png(plot_esd(values, vars(fit), tmp_path / "m.png", title="mapping fit"))


def test_plot_correlation_flow(tmp_path):
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


def test_plot_metric_vs_accuracy(tmp_path):
    zoo = small_zoo()
    reg = regress(zoo)
    row = reg[reg["metric"] == "alpha"].iloc[0]
    assert_png(plot_metric_vs_accuracy(zoo, row, tmp_path / "alpha.png", series="VGG",
                                       metric="alpha"))
    row = reg[reg["metric"] == "log_norm"].iloc[0]
    assert np.isnan(row["r2"])
    assert_png(plot_metric_vs_accuracy(zoo, row, tmp_path / "log_norm.png", series="VGG",
                                       metric="log_norm"))


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


def test_plot_esd_with_package_fit(tmp_path):
    from zooscope import fit_power_law

    rng = np.random.default_rng(0)
    eigenvalues = np.linalg.svd(rng.standard_t(3, size=(300, 150)), compute_uv=False) ** 2
    fit = fit_power_law(eigenvalues)
    assert_png(plot_esd(eigenvalues, fit, tmp_path / "real.png", title="student-t 300x150"))


def test_plot_randomization_and_its_place_in_the_model_esds(tmp_path):
    from conftest import write_model_dir
    from zooscope.spectra.esd import compute_model_esd, load_layer_eigenvalues
    from zooscope.analysis.metrics import fit_layers
    from zooscope.report.plots import plot_model_esds, plot_randomization

    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 100)) + 2.0 * rng.standard_normal((300, 2)) @ rng.standard_normal((2, 100))
    model_dir = write_model_dir(tmp_path / "model", [("fc", "Linear", w), ("tiny", "Linear", w[:20, :10])])
    index = compute_model_esd(model_dir / "model.safetensors", model_dir / "layers.json", tmp_path / "esd",
                              randomize=True)
    record = index["layers"][0]
    values = load_layer_eigenvalues(tmp_path / "esd", record)[0]
    rand = load_layer_eigenvalues(tmp_path / "esd", record, randomized=True)[0]
    assert_png(plot_randomization(values, rand, (300, 100), tmp_path / "one.png", title="fc"))
    square = rng.standard_normal((80, 80))  # MP ratio 1: the bulk starts at 0
    assert_png(plot_randomization(np.linalg.eigvalsh(square.T @ square), rand[:80], (80, 80),
                                  tmp_path / "square.png", title="square"))
    layers = fit_layers(index, lambda r, randomized=False: load_layer_eigenvalues(tmp_path / "esd", r,
                                                                                 randomized=randomized))
    written = plot_model_esds(index, layers, esd_dir=tmp_path / "esd", out_dir=tmp_path / "plots", model="m")
    # the fitted matrix gets both figures, the skipped one (10 eigenvalues) only its ESD
    assert sorted(p.name for p in written) == ["fc.png", "fc.rand.png", "tiny.png"]
    for path in written:
        assert_png(path)


def test_a_sliced_conv_layer_gets_one_figure_with_a_panel_per_slice(tmp_path):
    from PIL import Image

    from conftest import write_model_dir
    from zooscope.spectra.esd import compute_model_esd, load_layer_eigenvalues
    from zooscope.analysis.metrics import fit_layers
    from zooscope.report.plots import plot_model_esds

    rng = np.random.default_rng(1)
    kernel = rng.standard_t(3, size=(120, 80, 3, 3))  # 9 slices of 120 x 80
    model_dir = write_model_dir(tmp_path / "model", [("conv", "Conv2d", kernel), ("fc", "Linear", kernel[:, :, 0, 0])])
    esd_dir = tmp_path / "esd"
    index = compute_model_esd(model_dir / "model.safetensors", model_dir / "layers.json", esd_dir, randomize=True)
    layers = fit_layers(index, lambda r, randomized=False: load_layer_eigenvalues(esd_dir, r, randomized=randomized))
    assert (layers["layer"] == "conv").sum() == 9
    written = plot_model_esds(index, layers, esd_dir=esd_dir, out_dir=tmp_path / "plots", model="m")
    assert sorted(p.name for p in written) == ["conv.png", "conv.rand.png", "fc.png", "fc.rand.png"]
    for path in written:
        assert_png(path)
    # nine panels in a 3 x 3 grid of 4 x 3 inch panels, against one 6.4 x 4.8 inch figure
    width, height = Image.open(tmp_path / "plots" / "conv.png").size
    single = Image.open(tmp_path / "plots" / "fc.png").size
    assert width == 3 * 4.0 * 110 and height == round((3 * 3.0 + 0.4) * 110)
    assert single == (round(6.4 * 110), round(4.8 * 110))


def test_relative_depth_maps_first_and_last_layer_to_0_and_1():
    from zooscope.report.plots import relative_depth

    np.testing.assert_allclose(relative_depth([2, 3, 4, 6]), [0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(relative_depth(pd.Series([5, 5])), [0.0, 0.0])
    out = relative_depth([0, None, 4])
    assert out[0] == 0.0 and np.isnan(out[1]) and out[2] == 1.0


def test_plot_noise_ladder(tmp_path):
    from zooscope.analysis.discrimination import discrimination
    from zooscope.report.plots import plot_noise_ladder

    models = pd.DataFrame({"model": ["a", "b", "c", "x"], "series": ["s", "s", "s", "t"],
                           "up": [1.0, 2.0, 3.0, 0.0], "swap": [2.0, 1.0, 3.0, 0.0], "flat": [1.0] * 4})
    noise = {"a": 0.0, "b": 0.5, "c": 1.0}
    table = discrimination(models, noise)
    assert_png(plot_noise_ladder(models, noise, table, tmp_path / "s.png", series="s"))
    with pytest.raises(ValueError, match="'t'"):
        plot_noise_ladder(models, noise, table, tmp_path / "t.png", series="t")
