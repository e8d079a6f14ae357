"""The installed ``zooscope`` console script: ``zooscope regress``."""
from __future__ import annotations

import io
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from zooscope.analysis.regression import REGRESSION_COLUMNS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A published-style table: torchvision top-1 accuracies, made-up metric values.
PUBLISHED = """\
model\tseries\taccuracy\talpha\talpha_weighted\tlog_norm\tnum_layers
vgg11\tVGG\t69.02\t4.21\t2.95\t2.41\t11
vgg13\tVGG\t69.93\t4.05\t2.71\t2.44\t13
vgg16\tVGG\t71.59\t3.82\t2.38\t2.52\t16
vgg19\tVGG\t72.38\t3.70\t2.29\t2.55\t19
vgg11_bn\tVGG-BN\t70.37\t3.95\t1.80\t2.10\t11
vgg13_bn\tVGG-BN\t71.59\t3.91\t1.62\t2.13\t13
vgg16_bn\tVGG-BN\t73.36\t3.64\t1.41\t2.15\t16
vgg19_bn\tVGG-BN\t74.22\t3.60\t\t2.19\t19
resnet18\tResNet\t69.76\t3.98\t1.21\t1.92\t18
resnet34\tResNet\t73.31\t3.75\t1.10\t1.99\t34
resnet50\tResNet\t76.13\t3.52\t0.95\t2.02\t50
resnet101\tResNet\t77.37\t3.41\t0.90\t2.06\t101
resnet152\tResNet\t78.31\t3.37\t0.86\t2.08\t152
"""


def zooscope_script() -> str:
    candidate = Path(sys.executable).parent / "zooscope"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("zooscope")
    if found is None:
        pytest.skip("the zooscope console script is not installed (pip install -e .)")
    return found


def run(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([zooscope_script(), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def reference(x, y) -> dict:
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    slope = np.cov(x, y, ddof=1)[0, 1] / np.var(x, ddof=1)
    intercept = y.mean() - slope * x.mean()
    residuals = y - intercept - slope * x
    r = stats.pearsonr(x, y).statistic
    return {"n": x.size, "slope": slope, "intercept": intercept, "r2": r * r,
            "rmse": math.sqrt(np.mean(residuals**2)), "pearson_r": r,
            "spearman_rho": stats.spearmanr(x, y).statistic,
            "kendall_tau": stats.kendalltau(x, y).statistic}


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_regress_published_table(tmp_path):
    table = tmp_path / "published.tsv"
    table.write_text(PUBLISHED)
    out = tmp_path / "out"
    result = run("regress", table, "-o", out)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "9 regressions" in lines[0]

    reg = pd.read_csv(out / "regressions.tsv", sep="\t")
    assert list(reg.columns)[:11] == ["series", "metric", "n", "num_left_out", "slope", "intercept", "r2", "rmse",
                                      "pearson_r", "spearman_rho", "kendall_tau"]
    assert (reg["num_left_out"] == 0).all()  # every model of the table has every metric
    assert list(reg.columns) == list(REGRESSION_COLUMNS)  # and the uncertainty columns (docs/statistics.md)
    # Series sorted; metrics in table order; num_layers is bookkeeping, not a metric.
    assert list(zip(reg["series"], reg["metric"])) == [
        (s, m) for s in ["ResNet", "VGG", "VGG-BN"]
        for m in ["alpha", "alpha_weighted", "log_norm"]
    ]
    models = pd.read_csv(table, sep="\t")
    for _, row in reg.iterrows():
        sub = models[models["series"] == row["series"]].dropna(subset=[row["metric"]])
        expected = reference(sub[row["metric"]], sub["accuracy"])
        assert row["n"] == expected["n"]
        for key, value in expected.items():
            # regressions.tsv is written with 12 significant digits
            assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (row["series"], key)
    assert reg.loc[(reg["series"] == "VGG-BN") & (reg["metric"] == "alpha_weighted"),
                   "n"].item() == 3
    assert (reg.loc[reg["metric"] == "alpha", "kendall_tau"] < 0).all()

    for series in ["ResNet", "VGG", "VGG-BN"]:
        for metric in ["alpha", "alpha_weighted", "log_norm"]:
            assert_png(out / "plots" / series / f"{metric}.png")


def test_regress_csv_with_metrics_option(tmp_path):
    models = pd.read_csv(io.StringIO(PUBLISHED), sep="\t")
    table = tmp_path / "published.csv"
    models.to_csv(table, index=False)
    out = tmp_path / "out"
    result = run("regress", table, "-o", out, "--metrics", "log_norm,alpha", "--no-plots")
    assert result.returncode == 0, result.stderr
    reg = pd.read_csv(out / "regressions.tsv", sep="\t")
    assert list(reg["metric"]) == ["log_norm", "alpha"] * 3
    assert not (out / "plots").exists()


def test_regress_output_is_deterministic(tmp_path):
    table = tmp_path / "t.tsv"
    table.write_text(PUBLISHED)
    assert run("regress", table, "-o", tmp_path / "a", "--no-plots").returncode == 0
    assert run("regress", table, "-o", tmp_path / "b", "--no-plots").returncode == 0
    assert ((tmp_path / "a" / "regressions.tsv").read_bytes()
            == (tmp_path / "b" / "regressions.tsv").read_bytes())


def test_missing_file(tmp_path):
    missing = tmp_path / "no_such_table.tsv"
    result = run("regress", missing, "-o", tmp_path / "out")
    assert result.returncode == 2
    assert "no_such_table.tsv" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_accuracy_column(tmp_path):
    table = tmp_path / "noacc.tsv"
    models = pd.read_csv(io.StringIO(PUBLISHED), sep="\t")
    models.drop(columns=["accuracy"]).to_csv(table, sep="\t", index=False)
    result = run("regress", table, "-o", tmp_path / "out")
    assert result.returncode == 2
    assert "noacc.tsv" in result.stderr and "'accuracy'" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_metric(tmp_path):
    table = tmp_path / "t.tsv"
    table.write_text(PUBLISHED)
    result = run("regress", table, "-o", tmp_path / "out", "--metrics", "alpha,stable_rank")
    assert result.returncode == 2
    assert "t.tsv" in result.stderr and "'stable_rank'" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_regress():
    result = run("--help")
    assert result.returncode == 0
    assert "regress" in result.stdout
    result = run("regress", "--help")
    assert result.returncode == 0
    for option in ["TABLE", "--out", "--metrics", "--no-plots"]:
        assert option in result.stdout
