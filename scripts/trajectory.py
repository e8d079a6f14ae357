from zooscope import io
from zooscope.analysis.metrics import read_layers_table
from zooscope.analysis.trajectory import alpha_by_depth, checkpoints_table, trajectory_table
from zooscope.jobs import job
from zooscope.report.trajectory_plots import plot_trajectory

with job(snakemake, name="trajectory"):
    series, steps = snakemake.wildcards.series, snakemake.params.steps
    checkpoints = checkpoints_table([io.read_json(path) for path in snakemake.input.metas],
                                    [io.read_json(path) for path in snakemake.input.summaries], steps)
    table = trajectory_table(series, checkpoints)
    alpha = alpha_by_depth({step: read_layers_table(path) for step, path in zip(steps.values(), snakemake.input.layers, strict=True)})
    plot_trajectory(checkpoints, table, alpha, snakemake.output.plots, series=series)
    io.write_tsv(snakemake.output.table, table)
