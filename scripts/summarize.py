from zooscope import io
from zooscope.jobs import job
from zooscope.metrics import read_layers_table, summarize

with job(snakemake, name="summarize"):
    layers = read_layers_table(snakemake.input.layers)
    io.write_json(snakemake.output.summary, summarize(snakemake.wildcards.model, layers))
