"""The demo figures that README.md and docs/ quote, recomputed from one finished demo run.

Not run by pytest; reads files only (it runs nothing):

    python benchmarks/demo_figures.py [--run DIR]    # DIR: the folder `snakemake --cores all` ran in

It reads DIR/results (demo/models.tsv, demo/discrimination.tsv, jacobian/*/summary.json),
DIR/resources/models/*/meta.json (training accuracies), the job logs DIR/logs/**/*.log (each ends
with "took W s; process CPU U s user, S s system") and the newest DIR/.snakemake/log/*.log (job
count, elapsed time), and prints, in Markdown, every figure the documentation quotes:

* the run: jobs, elapsed time, the jobs' CPU time, and per stage the wall and CPU time inside
  the jobs (training inside fetch from its own log line);
* accuracies per series (test: models.tsv; train: meta.json);
* the label-noise table of docs/jacobian.md and the Jacobian stage's CPU seconds per phase;
* which metrics order each label-noise series exactly (discrimination.tsv).

The job logs hold wall times of a shared machine: quote them with the date of the run and the
load it ran under.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from collections import defaultdict
from pathlib import Path

TOOK = re.compile(r"INFO zooscope: (?P<stage>\w+) \((?P<what>[^)]*)\) took (?P<wall>[\d.]+) s; "
                  r"process CPU (?P<user>[\d.]+) s user, (?P<sys>[\d.]+) s system")
TRAINED = re.compile(r"trained \w+ for \d+ epochs in (?P<wall>[\d.]+) s")
PHASE = re.compile(r"zooscope\.jacobian[\w.]*: (?P<phase>[^:]+): (?P<cpu>[\d.]+) CPU s")
ELAPSED = re.compile(r"Elapsed time: (\d+):(\d+):([\d.]+)")
TOTAL = re.compile(r"^total\s+(\d+)\s*$", re.MULTILINE)
NOISE_SERIES = {"label-noise": "MLP", "label-noise-cnn": "LeNet"}
TABLE_ROWS = (  # (label, column of models.tsv, format)
    ("test accuracy (%, 450 samples)", "accuracy", "{:.1f}"),
    ("`jac_rank`", "jac_rank", "{:.0f}"),
    ("`jac_effective_rank`", "jac_effective_rank", "{:.1f}"),
    ("`jac_stable_rank`", "jac_stable_rank", "{:.1f}"),
    ("`jac_alpha`", "jac_alpha", "{:.2f}"),
    ("`jac_log_spectral_norm`", "jac_log_spectral_norm", "{:.2f}"),
    ("`jac_diag_max`", "jac_diag_max", "{:.0f}"),
    ("`jac_hessian_top`", "jac_hessian_top", "{:.1f}"),
    ("`jac_hessian_trace`", "jac_hessian_trace", "{:.0f}"),
    ("weight `stable_rank`", "stable_rank", "{:.1f}"),
    ("weight `log_norm`", "log_norm", "{:.2f}"),
    ("weight `alpha`", "alpha", "{:.2f}"),
)


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def span(values: list[float], fmt: str = "{:.1f}") -> str:
    low, high = min(values), max(values)
    return fmt.format(low) if fmt.format(low) == fmt.format(high) else f"{fmt.format(low)}-{fmt.format(high)}"


def run_figures(run: Path) -> list[str]:
    logs = sorted((run / ".snakemake" / "log").glob("*.snakemake.log"))
    text = logs[-1].read_text(encoding="utf-8") if logs else ""
    lines = ["## The run", ""]
    if elapsed := ELAPSED.search(text):
        hours, minutes, seconds = int(elapsed[1]), int(elapsed[2]), float(elapsed[3])
        total = TOTAL.search(text)
        lines.append(f"- {total[1] if total else '?'} jobs, elapsed {hours * 60 + minutes} min "
                     f"{seconds:.0f} s ({logs[-1].name})")
    wall, cpu, count, training = defaultdict(float), defaultdict(float), defaultdict(int), 0.0
    for log in sorted((run / "logs").rglob("*.log")):
        body = log.read_text(encoding="utf-8")
        training += sum(float(m["wall"]) for m in TRAINED.finditer(body))
        for match in TOOK.finditer(body):
            wall[match["stage"]] += float(match["wall"])
            cpu[match["stage"]] += float(match["user"]) + float(match["sys"])
            count[match["stage"]] += 1
    lines.append(f"- the jobs' processes: {sum(cpu.values()):.0f} CPU-seconds (user + system, "
                 f"start-up included); wall time inside the jobs {sum(wall.values()):.0f} s")
    lines.append(f"- training inside fetch: {training:.0f} s")
    lines += ["", "| stage | jobs | wall inside the jobs (s) | process CPU (s) |", "| --- | --- | --- | --- |"]
    lines += [f"| {stage} | {count[stage]} | {wall[stage]:.1f} | {cpu[stage]:.1f} |"
              for stage in sorted(wall, key=wall.get, reverse=True)]
    return lines


def accuracy_figures(run: Path, models: list[dict[str, str]]) -> list[str]:
    lines = ["", "## Accuracies (test: models.tsv; train: meta.json)", ""]
    by_series = defaultdict(list)
    for row in models:
        meta = json.loads((run / "resources" / "models" / row["model"] / "meta.json").read_text())
        train = meta.get("training", {}).get("train_accuracy")
        by_series[row["series"]].append((row["model"], float(row["accuracy"]), train))
    for series, rows in by_series.items():
        tests = "/".join(f"{test:.1f}" for _, test, _ in rows)
        trains = "/".join("-" if train is None else f"{train:.1f}" for _, _, train in rows)
        lines.append(f"- {series} ({', '.join(m for m, _, _ in rows)}): test {tests} %, train {trains} % "
                     f"(test {span([t for _, t, _ in rows])} %)")
    return lines


def label_noise_table(run: Path, models: list[dict[str, str]]) -> list[str]:
    rows = [row for row in models if row["series"] in NOISE_SERIES]
    summaries = {row["model"]: json.loads((run / "results" / "jacobian" / row["model"] / "summary.json")
                                          .read_text()) for row in rows}
    header = ["", *(f"{NOISE_SERIES[r['series']]} {float(_noise(run, r['model'])) * 100:.0f} %" for r in rows)]
    lines = ["", "## The label-noise table (docs/jacobian.md)", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for label, column, fmt in TABLE_ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt.format(float(r[column])) for r in rows) + " |")
    lines.append("| accuracy on the Jacobian's samples (%) | "
                 + " | ".join(f"{summaries[r['model']]['accuracy']:.1f}" for r in rows) + " |")
    lines.append("| mean loss on the samples | "
                 + " | ".join(f"{summaries[r['model']]['loss']:.2f}" for r in rows) + " |")
    samples = {(s["num_samples"], s["data_total"], s["route"]) for s in summaries.values()}
    lines.append(f"\n(samples, of, route): {sorted(samples)}")
    return lines


def _noise(run: Path, model: str) -> float:
    meta = json.loads((run / "resources" / "models" / model / "meta.json").read_text())
    return meta["options"]["label_noise"]


def jacobian_phases(run: Path, models: list[dict[str, str]]) -> list[str]:
    lines = ["", "## Jacobian stage, CPU seconds per phase (job logs)", ""]
    for series, name in NOISE_SERIES.items():
        phases = defaultdict(list)
        for row in (r for r in models if r["series"] == series):
            log = run / "logs" / "jacobian" / f"{row['model']}.log"
            for match in PHASE.finditer(log.read_text(encoding="utf-8")):
                phases[match["phase"]].append(float(match["cpu"]))
        lines += [f"- {name}: {phase}: {span(values, '{:.2f}')}" for phase, values in phases.items()]
    return lines


def discrimination_figures(run: Path) -> list[str]:
    rows = read_tsv(run / "results" / "demo" / "discrimination.tsv")
    lines = ["", "## Metrics that order each label-noise series exactly (|tau| = 1)", ""]
    for series in dict.fromkeys(r["series"] for r in rows):
        mine = [r for r in rows if r["series"] == series]
        exact = [f"{r['metric']} ({'+' if float(r['kendall_tau']) > 0 else '-'})"
                 for r in mine if r["separates"] == "True"]
        alpha = next(r["kendall_tau"] for r in mine if r["metric"] == "alpha")
        lines.append(f"- {series}: {', '.join(exact)}; alpha tau = {float(alpha):.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the folder the demo ran in (default: this checkout)")
    run = parser.parse_args().run
    models = read_tsv(run / "results" / "demo" / "models.tsv")
    lines = (run_figures(run) + accuracy_figures(run, models) + label_noise_table(run, models)
             + jacobian_phases(run, models) + discrimination_figures(run))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
