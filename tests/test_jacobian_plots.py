"""The Jacobian figures of a series (zooscope.report.jacobian_plots.plot_jacobian_series): what each draws,
read back from the figures, and their column titles."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zooscope.report.jacobian_plots import (
    hessian_figure, jacobian_column_title, jacobian_esd_figure, jacobian_overlay_figure, plot_jacobian_series,
)


def ccdf(values):
    values = np.sort(np.asarray(values, dtype=float))
    values = values[values > 0]
    return values, 1.0 - np.arange(values.size) / values.size


def spectra_and_layers(seed, *, hessian=True):
    rng = np.random.default_rng(seed)
    gram = np.sort(1.0 + rng.pareto(1.5, size=80))
    spectra = {"gram/net.0": gram, "diag/net.0": np.sort(rng.pareto(2.0, size=500)), "io": np.sort(rng.random(90))}
    if hessian:
        spectra.update({"hessian/nodes": np.array([-0.1, 0.0, 2.0, 30.0]), "hessian/weights": np.full(4, 0.25)})
    layers = pd.DataFrame({"layer": ["net.0"], "rank": [80], "effective_rank": [20.5], "alpha": [2.5],
                           "xmin": [gram[40]], "D": [0.05], "status": ["ok"], "reason": [np.nan]})
    return spectra, layers


def test_series_figures_are_written(tmp_path):
    clean, clean_layers = spectra_and_layers(0)
    noisy, noisy_layers = spectra_and_layers(1)
    # a skipped layer (no fit) and a model without the Hessian must still draw
    noisy_layers = noisy_layers.assign(alpha=np.nan, xmin=np.nan, status="skipped", reason="too few")
    del noisy["hessian/nodes"], noisy["hessian/weights"]
    written = plot_jacobian_series({"clean": clean, "random": noisy}, {"clean": clean_layers, "random": noisy_layers},
                                   titles={"clean": "clean", "random": "random"}, series="s", out_dir=tmp_path / "s")
    names = sorted(path.name for path in written)
    assert names == ["hessian.png", "input_output.png", "jacobian_diag.png", "jacobian_esd.png"]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == names  # nothing else, no .part left
    with Image.open(tmp_path / "s" / "jacobian_esd.png") as image:
        width, height = image.size
    assert width > height  # two models side by side, one layer

    spectra, layers = {"clean": clean, "random": noisy}, {"clean": clean_layers, "random": noisy_layers}
    fig = jacobian_esd_figure(spectra, layers, titles={"clean": "clean\n0 %", "random": "random"}, series="s")
    try:
        assert len(fig.axes) == 2  # one layer (row) of two models (columns)
        fitted, unfitted = fig.axes
        assert (fitted.get_title(), unfitted.get_title()) == ("clean\n0 %", "random")
        assert fitted.get_ylabel() == "net.0\nP(eigenvalue >= x)" and fitted.get_xlabel() == "eigenvalue of J J^T"
        for ax, values in ((fitted, clean["gram/net.0"]), (unfitted, noisy["gram/net.0"])):
            points = ax.get_lines()[0]
            np.testing.assert_allclose(points.get_xdata(), ccdf(values)[0])
            np.testing.assert_allclose(points.get_ydata(), ccdf(values)[1])
        line = fitted.get_lines()[1]  # the fitted power law: slope 1 - alpha from xmin on
        xs, ys = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        assert xs[0] == pytest.approx(clean_layers["xmin"][0]) and xs[-1] == pytest.approx(clean["gram/net.0"].max())
        assert np.polyfit(np.log(xs), np.log(ys), 1)[0] == pytest.approx(1 - 2.5)
        assert [t.get_text() for t in fitted.texts] == ["alpha 2.50, D 0.05\nrank 80, eff. 20.5"]
        assert len(unfitted.get_lines()) == 1  # points only
        assert [t.get_text() for t in unfitted.texts] == ["not fitted: too few\nrank 80, eff. 20.5"]
    finally:
        plt.close(fig)

    fig = jacobian_overlay_figure(spectra, ["diag/net.0"], titles={"clean": "clean\n0 %"}, title="t", xlabel="x")
    try:
        (ax,) = fig.axes
        assert ax.get_title() == "diag/net.0"
        assert [line.get_label() for line in ax.get_lines()] == ["clean, 0 %", "random"]  # every model overlaid
        for line, values in zip(ax.get_lines(), (clean["diag/net.0"], noisy["diag/net.0"])):
            np.testing.assert_allclose(line.get_xdata(), ccdf(values)[0])
    finally:
        plt.close(fig)

    fig = hessian_figure(spectra, titles={}, series="s")
    try:
        (ax,) = fig.axes  # only the model with a Hessian
        assert ax.get_title() == "clean"
        (stems,) = ax.collections
        segments = stems.get_segments()
        np.testing.assert_allclose([seg[0][0] for seg in segments], clean["hessian/nodes"])
        np.testing.assert_allclose([seg[1][1] for seg in segments], clean["hessian/weights"])
        assert ax.get_xlabel() == "Hessian eigenvalue (top 30)"
    finally:
        plt.close(fig)


def test_optional_figures_are_left_out_without_their_spectra(tmp_path):
    spectra, layers = spectra_and_layers(0, hessian=False)
    del spectra["io"]
    written = plot_jacobian_series({"m": spectra}, {"m": layers}, titles={}, series="s", out_dir=tmp_path)
    assert sorted(path.name for path in written) == ["jacobian_diag.png", "jacobian_esd.png"]


def test_column_title_from_meta():
    meta = {"model": "mlp-noise100", "accuracy": 9.111, "options": {"label_noise": 1.0},
            "training": {"train_accuracy": 99.93}}
    assert jacobian_column_title(meta) == "mlp-noise100\n100 % labels shuffled\ntrain 99.9 %, test 9.1 %"
    assert jacobian_column_title({"model": "r", "accuracy": None}) == "r"
