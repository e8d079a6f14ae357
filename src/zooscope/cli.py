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
        "For example results/{zoo}/models.tsv, or metrics published by others.",
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
        from zooscope.report.series_plots import plot_series_regressions

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


# --------------------------------------------------------------------------------------------
# zooscope compare


def _add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    from zooscope.config import EsdConfig, EsdSettings, FitSettings  # light: the config's defaults

    parser.add_argument("model", metavar="A", type=Path,
                        help="the fine-tuned model: a weights file (.safetensors, or a PyTorch file read "
                        "weights-only), a *.index.json, a model folder, or a PEFT LoRA adapter folder "
                        "(adapter_config.json + adapter_model.safetensors) of B")
    parser.add_argument("base", metavar="B", type=Path, help="its base model, in the same forms but an adapter")
    parser.add_argument("-o", "--out", metavar="FILE", type=Path, default=Path("compare.tsv"),
                        help="the per-layer table, tab-separated (default: compare.tsv); its columns are "
                        "layer, slice, type, N, M and the delta_ columns of layers.tsv (docs/finetunes.md)")
    parser.add_argument("--conv2d", choices=("slices", "stacked", "fft"), default=EsdSettings.conv2d,
                        help="how a Conv2d weight is analysed, as config esd.conv2d (default: %(default)s)")
    parser.add_argument("--normalize", choices=("none", "N"), default=EsdSettings.normalize,
                        help="eigenvalues as-is or divided by N, as config esd.normalize (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=EsdConfig.delta_top_k, metavar="K",
                        help="top singular directions compared by delta_overlap, as config esd.delta_top_k "
                        "(default: %(default)s)")
    parser.add_argument("--min-evals", type=int, default=FitSettings.min_evals, metavar="N",
                        help="fewest eigenvalues for delta_alpha, as config fit.min_evals (default: %(default)s)")


# The columns the printed table shows (the file has them all).
_PRINTED = (("layer", "layer"), ("slice", "slice"), ("delta_status", "status"), ("delta_relative_norm", "rel_norm"),
            ("delta_lambda_max", "lambda_max"), ("delta_alpha", "alpha"), ("delta_stable_rank", "stable_rank"),
            ("delta_overlap", "overlap"))


def _cell(value) -> str:
    if value is None or value == "":
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _run_compare(args: argparse.Namespace) -> int:
    from zooscope.io import write_rows_tsv
    from zooscope.analysis.compare import COMPARE_COLUMNS, compare_weights
    from zooscope.config import EsdSettings, FitSettings
    from zooscope.sources.base import FetchError
    from zooscope.spectra.delta_esd import BaseMismatchError

    for path in (args.model, args.base):
        if not path.exists():
            raise UsageError(f"{path}: no such file or folder")
    if args.top_k < 1 or args.min_evals < 1:
        raise UsageError("--top-k and --min-evals must be at least 1")
    try:
        result = compare_weights(args.model, args.base, EsdSettings(conv2d=args.conv2d, normalize=args.normalize),
                                 FitSettings(min_evals=args.min_evals), top_k=args.top_k)
    except (FetchError, BaseMismatchError) as exc:
        # the message names A as model 'model' and B as 'base'
        raise UsageError(f"comparing {args.model} (model) against {args.base} (base): {exc}") from exc
    write_rows_tsv(args.out, COMPARE_COLUMNS, result.rows)
    table = [[header for _, header in _PRINTED]] + [[_cell(row[column]) for column, _ in _PRINTED] for row in result.rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(_PRINTED))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    statuses = {}
    for row in result.rows:
        statuses.setdefault(row["layer"], row["delta_status"])
    counts = ", ".join(f"{sum(s == status for s in statuses.values())} {status}"
                       for status in ("ok", "skipped", "failed", "unchanged", "unmatched"))
    print(f"{PROG} compare: {args.model} ({result.num_layers} layers) against {args.base} "
          f"({result.num_base_layers} layers): {counts}; table in {args.out}")
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
    Command(
        name="compare",
        help="the per-layer update of model A against its base B (delta spectra), without a workflow",
        description="For every layer that A and B both have (same name, type and shape): the spectrum of "
        "the update dW = W_A - W_B and its metrics (delta_lambda_max, delta_alpha, delta_log_norm, "
        "delta_stable_rank), ||dW||_F / ||W_B||_F and the overlap of dW's top singular directions with "
        "B's; layers of one model only, or of another shape, are listed with the reason. A LoRA adapter "
        "folder as A is merged onto B, its updates computed from the factors. Prints the table and "
        "writes it as a TSV.",
        add_arguments=_add_compare_arguments,
        run=_run_compare,
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
