from pathlib import Path

import pandas as pd

from zooscope import io
from zooscope.analysis.discrimination import discrimination, noise_levels
from zooscope.jobs import job
from zooscope.report.discrimination_plots import plot_noise_ladder

with job(snakemake, name="discrimination"):
    models = pd.read_csv(snakemake.input.models, sep="\t")
    noise = noise_levels(io.read_json(path) for path in snakemake.input.metas)
    table = discrimination(models, noise)
    io.write_tsv(snakemake.output.table, table)
    plots = Path(snakemake.output.plots)
    plots.mkdir(parents=True, exist_ok=True)
    for series in table["series"].unique():
        plot_noise_ladder(models, noise, table, plots / f"{io.safe_filename(series)}.png", series=series)
