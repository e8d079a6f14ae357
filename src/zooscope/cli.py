"""The ``zooscope`` command line.

Subcommands are registered in :data:`COMMANDS`: each has a function that adds its arguments to
an argparse subparser and a function that runs it and returns an exit code. Bad input (a missing
or unreadable file, a missing column) is reported as one line on stderr, exit code 2, without a
traceback. Heavy libraries are imported inside the commands, so ``zooscope --help`` is quick.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from zooscope import __version__

PROG = "zooscope"
EXIT_OK = 0
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: printed as one line on stderr, exit code 2."""


class Command(NamedTuple):
    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------------------------
# zooscope regress


def _split_metrics(text: str) -> list[str]:
    metrics = [m.strip() for m in text.split(",") if m.strip()]
    if not metrics:
        raise argparse.ArgumentTypeError("expected one or more metric names separated by commas")
    return metrics


def _add_regress_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "table",
        metavar="TABLE",
        type=Path,
        help="per-model table: tab-separated, or comma-separated when the name ends in .csv "
        "(.gz etc. also read). Needs the columns 'model' (name), 'series' (architecture "
        "series the model is compared within), 'accuracy' (reported accuracy, e.g. top-1 in "
        "percent) and one numeric column per metric; empty cells are missing values. "
        "For example results/zoo/models.tsv, or metrics published by others.",
    )
    parser.add_argument(
        "-o",
        "--out",
        dest="out",
        metavar="DIR",
        type=Path,
        required=True,
        help="output folder (created if needed): DIR/regressions.tsv with one row per "
        "(series, metric) and the columns series, metric, n, slope, intercept, r2, rmse, "
        "pearson_r, spearman_rho, kendall_tau; and DIR/plots/{series}/{metric}.png, a scatter "
        "of accuracy against the metric with the fitted line (names outside [A-Za-z0-9._-] "
        "are written with '_').",
    )
    parser.add_argument(
        "--metrics",
        metavar="M1,M2,...",
        type=_split_metrics,
        default=None,
        help="comma-separated metric columns to regress on, in this order (default: every "
        "numeric column other than accuracy and bookkeeping columns such as num_layers, "
        "in table order)",
    )
    parser.add_argument(
        "--no-plots",
        dest="plots",
        action="store_false",
        help="write regressions.tsv only, no scatter plots",
    )


def _run_regress(args: argparse.Namespace) -> int:
    from zooscope.io import write_tsv
    from zooscope.analysis.regression import read_models_table, regress

    table_path: Path = args.table
    try:
        models = read_models_table(table_path)
    except FileNotFoundError as exc:
        raise UsageError(f"{table_path}: no such file") from exc
    except OSError as exc:
        raise UsageError(f"{table_path}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:  # ModelsTableError: message already names the file
        raise UsageError(str(exc)) from exc
    try:
        regressions = regress(models, args.metrics)
    except ValueError as exc:
        raise UsageError(f"{table_path}: {exc}") from exc

    out_dir: Path = args.out
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a folder")
    out_file = out_dir / "regressions.tsv"
    write_tsv(out_file, regressions)

    plots = []
    if args.plots:
        from zooscope.report.plots import plot_series_regressions

        try:
            plots = plot_series_regressions(models, regressions, out_dir / "plots")
        except ValueError as exc:
            raise UsageError(f"{table_path}: {exc}") from exc

    n_series = regressions["series"].nunique()
    n_metrics = regressions["metric"].nunique()
    fitted = int(regressions["r2"].notna().sum())
    summary = (
        f"{PROG} regress: {len(models)} models, {n_series} series x {n_metrics} metrics -> "
        f"{len(regressions)} regressions ({fitted} fitted) in {out_file}"
    )
    if args.plots:
        summary += f"; {len(plots)} plots in {out_dir / 'plots'}"
    print(summary)
    return EXIT_OK


COMMANDS: tuple[Command, ...] = (
    Command(
        name="regress",
        help="regress accuracy on each metric, per series, and plot each regression",
        description="For each series in TABLE and each metric: ordinary least squares of "
        "accuracy on the metric, with n, slope, intercept, R^2, RMSE (over n, no "
        "degrees-of-freedom correction), Pearson r, Spearman rho and Kendall tau-b (signed). "
        "Rows with a missing accuracy or metric are left out of that regression; with fewer "
        "than 3 models or a constant metric the statistics are NaN.",
        add_arguments=_add_regress_arguments,
        run=_run_regress,
    ),
)


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="zooscope: audit zoos of pretrained neural networks from their weights "
        "alone. The full pipeline runs as a Snakemake workflow; these commands run single "
        "steps on files.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                       help="one of the commands below; "
                                       "'zooscope COMMAND --help' describes its options")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help,
                                    description=command.description)
        command.add_arguments(sub)
        sub.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 bad input or usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._run(args)
    except UsageError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
