"""The Jacobian figures of a series (zooscope.report.plots.plot_jacobian_series) and their column titles."""
import numpy as np
import pandas as pd
from PIL import Image

from zooscope.report.plots import jacobian_column_title, plot_jacobian_series


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
