from functools import partial
from pathlib import Path

from zooscope import io
from zooscope.analysis.metrics import layer_columns, layer_rows, summarize
from zooscope.config import FitSettings
from zooscope.failures import write_failed_fit
from zooscope.jobs import retain_freed_memory, run_model_job
from zooscope.sources.coverage import COVERAGE_COLUMNS, coverage_counts, coverage_rows
from zooscope.spectra.esd import load_layer_eigenvalues

model, output = snakemake.wildcards.model, snakemake.output
retain_freed_memory()  # the refits' arrays: reused, not page-faulted in again (its docstring)


# One job writes both the layer rows and the model summary: a summary is milliseconds of work, a
# job of its own costs a process start-up and a scheduling hop per model (issue 5's benchmark).
def body(log):
    index = io.read_json(snakemake.input.index)
    fit = FitSettings(**snakemake.params.fit)
    rows = layer_rows(index, partial(load_layer_eigenvalues, Path(snakemake.input.index).parent), fit,
                      workers=snakemake.threads)
    io.write_rows_tsv(output.layers, layer_columns(index), rows)
    # every tensor of the checkpoint, with what the fit adds (below min_evals, failed)
    coverage = coverage_rows(io.read_json(snakemake.input.tensors)["tensors"], rows)
    io.write_rows_tsv(output.coverage, COVERAGE_COLUMNS, coverage)
    io.write_json(output.summary, {**summarize(model, rows, index.get("delta"), level=fit.level),
                                   "coverage": coverage_counts(coverage)})


def write_failed(failure):
    io.write_rows_tsv(output.coverage, COVERAGE_COLUMNS, [])
    write_failed_fit(output.layers, output.summary, model, failure)


run_model_job(snakemake, name="fit", stage="fit", body=body, record=output.summary, cap_memory=True,
              upstream=[snakemake.input.index], write_failed=write_failed)
