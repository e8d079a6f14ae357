from pathlib import Path

from zooscope import io
from zooscope.jobs import job
from zooscope.analysis.metrics import read_layers_table
from zooscope.report.esd_plots import plot_model_esds

with job(snakemake, name="plot_esd"):
    plot_model_esds(
        io.read_json(snakemake.input.index),
        read_layers_table(snakemake.input.layers),
        esd_dir=Path(snakemake.input.index).parent,
        out_dir=Path(snakemake.output[0]),
        model=snakemake.wildcards.model,
    )
