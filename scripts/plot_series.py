from pathlib import Path

import pandas as pd

from zooscope.config import FitSettings
from zooscope.jobs import job
from zooscope.analysis.metrics import read_layers_table
from zooscope.report.series_plots import plot_series

with job(snakemake, name="plot_series"):
    plot_series(
        series=snakemake.wildcards.series,
        layers_by_model={
            model: read_layers_table(path)
            for model, path in zip(snakemake.params.models, snakemake.input.layers, strict=True)
        },
        models=pd.read_csv(snakemake.input.models, sep="\t"),
        regressions=pd.read_csv(snakemake.input.regressions, sep="\t"),
        out_dir=Path(snakemake.output[0]),
        level=FitSettings(**snakemake.params.fit).level,
    )
