from pathlib import Path

import pandas as pd

from zooscope import io
from zooscope.jobs import job
from zooscope.report.jacobian_plots import jacobian_column_title, plot_jacobian_series

with job(snakemake, name="plot_jacobian"):
    from safetensors.numpy import load_file  # the spectra files of zooscope.jacobian.compute, without torch

    models = snakemake.params.models
    plot_jacobian_series(
        {model: load_file(path) for model, path in zip(models, snakemake.input.spectra, strict=True)},
        {model: pd.read_csv(path, sep="\t") for model, path in zip(models, snakemake.input.layers, strict=True)},
        titles={model: jacobian_column_title(io.read_json(path))
                for model, path in zip(models, snakemake.input.metas, strict=True)},
        series=snakemake.wildcards.series,
        out_dir=Path(snakemake.output[0]),
    )
