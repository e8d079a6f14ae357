"""The zoo-wide analyses and the report through the snakemake CLI: a tiny zoo with a label-noise
series, discrimination.tsv against a hand count of Kendall's tau, the audit cards and summary,
`snakemake --report`, and the report rendered in a real headless Chromium."""
import html
import itertools
import json
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
HEADER = "model\tseries\tsource\taccuracy\twidth\tdepth\tlabel_noise\tepochs\tseed\tbase\tlr\tlora_rank\tstop_epoch\tstep\n"
ROWS = [
    "n0\tnoise\ttrain:mlp\t\t64\t1\t0\t6\t1\t\t\t\t\t\n",
    "n50\tnoise\ttrain:mlp\t\t64\t1\t0.5\t6\t1\t\t\t\t\t\n",
    "n100\tnoise\ttrain:mlp\t\t64\t1\t1\t6\t1\t\t\t\t\t\n",
    "r1\tbaseline\trandom:mlp\t\t64\t1\t\t\t1\t\t\t\t\t\n",
    # a full fine-tune and a LoRA adapter of n0 (finetune: sources), and a training run's checkpoints
    "ft\ttuned\tfinetune:full\t\t\t\t\t3\t\tn0\t0.003\t\t\t\n",
    "lora\ttuned\tfinetune:lora\t\t\t\t\t3\t\tn0\t0.01\t2\t\t\n",
] + [f"run{k}\trun\ttrain:mlp\t\t64\t1\t\t6\t2\t\t\t\t{k}\t{k}\n" for k in (2, 4, 6)]
NOISE = {"n0": 0.0, "n50": 0.5, "n100": 1.0}


def snakemake(workdir, *args):
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("report")
    (workdir / "zoo.tsv").write_text(HEADER + "".join(ROWS))
    # the randomization check on (off by default), so that its figures are in the report too
    (workdir / "config.yaml").write_text("zoo: zoo.tsv\nesd:\n  randomize: true\n")
    snakemake(workdir, "--cores", "2")
    return workdir


def kendall_tau_b(x, y):
    """Kendall's tau-b by counting pairs (no ties in x here; ties in y count as neither)."""
    concordant = discordant = ties_y = 0
    for (x1, y1), (x2, y2) in itertools.combinations(zip(x, y), 2):
        sign = (x1 - x2) * (y1 - y2)
        concordant += sign > 0
        discordant += sign < 0
        ties_y += y1 == y2
    pairs = len(x) * (len(x) - 1) / 2
    return (concordant - discordant) / (pairs * (pairs - ties_y)) ** 0.5


def test_discrimination_table_by_hand(run):
    models = pd.read_csv(run / "results" / "zoo" / "models.tsv", sep="\t").set_index("model")
    table = pd.read_csv(run / "results" / "zoo" / "discrimination.tsv", sep="\t")
    assert set(table["series"]) == {"noise"}  # the baseline has no noise level
    assert {"alpha", "log_norm", "rand_distance", "num_traps"} <= set(table["metric"])
    for row in table.itertuples():
        # models without the metric (e.g. alpha_reliable of a model with no reliable matrix) are left out
        present = {model: models.loc[model, row.metric] for model in NOISE if pd.notna(models.loc[model, row.metric])}
        values = list(present.values())
        assert row.n == len(values), row.metric
        if len(set(values)) < 2:
            assert pd.isna(row.kendall_tau)
            continue
        tau = kendall_tau_b([NOISE[model] for model in present], values)
        assert row.kendall_tau == pytest.approx(tau), row.metric
        assert row.separates == (abs(tau) > 1 - 1e-12)


def test_audit_cards_and_summary_say_it_in_words(run):
    table = pd.read_csv(run / "results" / "zoo" / "discrimination.tsv", sep="\t")
    summary = (run / "results" / "zoo" / "summary.md").read_text()
    exact = next(line for line in summary.splitlines() if "rank its models exactly by noise level" in line)
    for row in table.itertuples():
        assert (f"`{row.metric}` (tau" in exact) == bool(row.separates), row.metric
    audit = pd.read_csv(run / "results" / "zoo" / "audit.tsv", sep="\t").set_index("model")
    for model in ("n0", "n50", "n100", "r1"):
        card = (run / "results" / "zoo" / "audit" / f"{model}.md").read_text()
        counts = audit.loc[model]
        assert card.startswith(f"# Audit card: {model}\n")
        assert (f"well-trained {counts.num_well_trained}, under-trained {counts.num_under_trained}, "
                f"over-trained {counts.num_over_trained}, uncertain {counts.num_uncertain}, "
                f"no power law {counts.num_no_power_law}.") in card
        assert counts.num_well_trained + counts.num_under_trained + counts.num_over_trained + counts.num_uncertain \
            + counts.num_no_power_law == counts.num_matrices
        assert counts.num_reliable == counts.num_matrices - counts.num_uncertain - counts.num_no_power_law
        assert "straddles a bound" in card
        assert ("good-versus-bad" in card) == (model in NOISE)
    # each model's matrices are the fitted rows of its layers.tsv
    layers = pd.read_csv(run / "results" / "metrics" / "n0" / "layers.tsv", sep="\t")
    assert audit.loc["n0", "num_matrices"] == (layers["status"] == "ok").sum()
    # the verdict counts are those of the layers' verdict column
    for verdict, column in (("uncertain", "num_uncertain"), ("no power law", "num_no_power_law")):
        assert audit.loc["n0", column] == (layers["verdict"] == verdict).sum()
    assert "have a reliable verdict" in summary
    # a fine-tune's card says how large its update is, where, and whether it is noise; a rank-2
    # update's largest eigenvalue is at least N M / (2 (sqrt N + sqrt M)^2) > 2.5 bulk edges (64 x 64, 10 x 64)
    tuned, lora = ((run / "results" / "zoo" / "audit" / f"{model}.md").read_text() for model in ("ft", "lora"))
    assert "## Its update against its base `n0`" in tuned and "of their norm" in tuned and "the most: `net." in tuned
    assert "looks like learned structure: in every changed matrix" in lora
    assert "## Its update" not in (run / "results" / "zoo" / "audit" / "n0.md").read_text()


def test_lint_is_clean(run):
    result = subprocess.run([*SNAKEMAKE, "--directory", str(run), "--lint"], capture_output=True, text=True)
    assert result.returncode == 0 and "Lints for" not in result.stdout + result.stderr, result.stdout + result.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium; .ci/run does)")
def test_report_shows_every_plot_in_chromium(run, tmp_path):
    snakemake(run, "--report", "results/report.html")
    report = (run / "results" / "report.html").read_text()
    # the report is a JS app: a copy gets tests/report_check.js, which clicks through every category,
    # subcategory and result and writes what the page then shows into the DOM that Chromium dumps
    script = (REPO / "tests" / "report_check.js").read_text()
    end = report.rindex("</body>")
    page = tmp_path / "report.html"
    page.write_text(report[:end] + f"<script>{script}</script>" + report[end:])
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=600000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=300,
    )
    found = re.search(r'<pre id="zooscope-report-check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the report's page did not finish its check; chromium said:\n{result.stderr[-3000:]}"
    shown = json.loads(html.unescape(found.group(1)))

    images = [entry for entry in shown if entry.get("content") == "img"]
    assert images and all(entry["width"] > 0 and entry["same"] and entry["listed"] for entry in images)
    pages = [entry for entry in shown if entry.get("content") == "html"]
    assert pages and all(entry["iframe"] for entry in pages)
    # every file the workflow drew is in the report and was shown, under its series and model
    # (the per-model figures under results/plots, the zoo's under results/zoo/plots)
    drawn = sorted(str(path.relative_to(run)) for folder in (run / "results" / "plots", run / "results" / "zoo" / "plots")
                   for path in folder.rglob("*.png"))
    assert sorted(entry["path"] for entry in images) == drawn
    where = {entry["path"]: (entry["category"], entry["subcategory"]) for entry in shown if "path" in entry}
    assert where["results/plots/esd/n50/net.0.rand.png"] == ("noise", "n50")
    assert where["results/zoo/plots/series/noise/correlation_flow.png"] == ("noise", "series figures")
    assert where["results/zoo/plots/discrimination/noise.png"] == ("noise", "series figures")
    assert where["results/zoo/audit/r1.html"] == ("baseline", "r1")
    assert where["results/zoo/summary.html"] == ("Zoo", "summary")
    # fine-tunes and adapters, and training trajectories, have a category each
    for model in ("ft", "lora"):
        assert where[f"results/zoo/audit/{model}.html"] == ("Fine-tunes and adapters", model)
        assert where[f"results/plots/esd/{model}/net.0.png"] == ("Fine-tunes and adapters", model)
    for figure in ("metrics_vs_step", "alpha_heatmap"):
        assert where[f"results/plots/trajectory/run/{figure}.png"] == ("Trajectories", "run")
    downloads = {entry["download"] for entry in shown if "download" in entry}
    assert downloads == {"models.tsv", "regressions.tsv", "discrimination.tsv", "audit.tsv", "trajectories.tsv"}
