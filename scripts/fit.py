from functools import partial
from pathlib import Path

from zooscope import io
from zooscope.esd import load_layer_eigenvalues
from zooscope.jobs import job
from zooscope.metrics import fit_layers

with job(snakemake, name="fit"):
    index = io.read_json(snakemake.input.index)
    layers = fit_layers(
        index,
        partial(load_layer_eigenvalues, Path(snakemake.input.index).parent),
        min_evals=snakemake.params.min_evals,
        floor=snakemake.params.floor,
        kind=snakemake.params.kind,
    )
    io.write_tsv(snakemake.output.layers, layers)
