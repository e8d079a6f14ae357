"""The Jacobian stage through the snakemake CLI: rows with a data column get results/jacobian/,
their jac_ metrics join models.tsv and the regressions."""
import math
import subprocess
import sys

import pandas as pd
from safetensors.numpy import load_file

from conftest import REPO
from zooscope.jacobian.compute import JACOBIAN_LAYER_COLUMNS, JACOBIAN_METRICS


def test_jacobian_stage(tmp_path):
    header = "model\tseries\tsource\taccuracy\twidth\tdepth\tepochs\tseed\tdata\tdata_samples\n"
    rows = [
        "r1\ts\trandom:mlp\t\t32\t1\t\t1\tdigits\t60\n",
        "r2\ts\trandom:mlp\t\t32\t1\t\t2\tdigits\t60\n",
        "t1\ts\ttrain:mlp\t\t32\t1\t2\t0\tdigits\t60\n",
        "nodata\ts\trandom:mlp\t\t32\t1\t\t3\t\t\n",
    ]
    (tmp_path / "zoo.tsv").write_text(header + "".join(rows))
    (tmp_path / "config.yaml").write_text(
        "zoo: zoo.tsv\nesd:\n  randomize: false\njacobian:\n  hessian_probes: 1\n  hessian_steps: 5\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--cores", "2", "results/zoo/models.tsv", "results/zoo/plots/jacobian/s"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "results" / "jacobian" / "nodata").exists()
    layers = pd.read_csv(tmp_path / "results" / "jacobian" / "t1" / "layers.tsv", sep="\t")
    assert list(layers.columns) == list(JACOBIAN_LAYER_COLUMNS)
    assert list(layers["layer"]) == ["net.0", "net.2"] and set(layers["num_samples"]) == {60}
    spectra = load_file(tmp_path / "results" / "jacobian" / "t1" / "spectra.safetensors")
    assert set(spectra) == {"gram/net.0", "gram/net.2", "diag/net.0", "diag/net.2", "io", "hessian/nodes",
                            "hessian/weights"}
    assert list(spectra["gram/net.0"].shape) == [layers.loc[0, "rank"]]
    # the series' figures: its three models with data side by side
    figures = tmp_path / "results" / "zoo" / "plots" / "jacobian" / "s"
    assert sorted(p.name for p in figures.glob("*.png")) == [
        "hessian.png", "input_output.png", "jacobian_diag.png", "jacobian_esd.png"]
    models = pd.read_csv(tmp_path / "results" / "zoo" / "models.tsv", sep="\t").set_index("model")
    for metric in JACOBIAN_METRICS:
        assert math.isfinite(models.loc["t1", metric]) and math.isnan(models.loc["nodata", metric])
    regressions = pd.read_csv(tmp_path / "results" / "zoo" / "regressions.tsv", sep="\t")
    assert set(JACOBIAN_METRICS) <= set(regressions["metric"])
