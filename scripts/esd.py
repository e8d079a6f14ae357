from pathlib import Path

from zooscope import io
from zooscope.esd import compute_model_esd
from zooscope.jobs import job

with job(snakemake, name="esd"):
    index = compute_model_esd(
        snakemake.input.weights,
        snakemake.input.layers,
        Path(snakemake.output.index).parent,
        conv2d=snakemake.params.conv2d,
        normalize=snakemake.params.normalize,
        conv2d_fft_size=snakemake.params.conv2d_fft_size,
        randomize=snakemake.params.randomize,
    )
    io.write_json(snakemake.output.index, index)
