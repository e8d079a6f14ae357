from functools import partial
from pathlib import Path

from zooscope import io
from zooscope.config import FitSettings
from zooscope.spectra.esd import load_layer_eigenvalues
from zooscope.jobs import job
from zooscope.analysis.metrics import layer_columns, layer_rows, summarize
from zooscope.sources.coverage import COVERAGE_COLUMNS, coverage_counts, coverage_rows

# One job writes both the layer rows and the model summary: a summary is milliseconds of work, a
# job of its own costs a process start-up and a scheduling hop per model (issue 5's benchmark).
with job(snakemake, name="fit"):
    index = io.read_json(snakemake.input.index)
    fit = FitSettings(**snakemake.params.fit)
    rows = layer_rows(index, partial(load_layer_eigenvalues, Path(snakemake.input.index).parent), fit)
    io.write_rows_tsv(snakemake.output.layers, layer_columns(index), rows)
    # every tensor of the checkpoint, with what the fit adds (below min_evals, failed)
    coverage = coverage_rows(io.read_json(snakemake.input.tensors)["tensors"], rows)
    io.write_rows_tsv(snakemake.output.coverage, COVERAGE_COLUMNS, coverage)
    io.write_json(snakemake.output.summary, {**summarize(snakemake.wildcards.model, rows, index.get("delta"), level=fit.level),
                                             "coverage": coverage_counts(coverage)})
