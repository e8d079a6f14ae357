from zooscope import io
from zooscope.aggregate import models_table
from zooscope.jobs import job
from zooscope.metrics import SUMMARY_METRICS
from zooscope.regression import regress

with job(snakemake, name="aggregate"):
    metas = [io.read_json(path) for path in snakemake.input.metas]
    summaries = [io.read_json(path) for path in snakemake.input.summaries]
    models = models_table(metas, summaries)
    io.write_tsv(snakemake.output.models, models)
    io.write_tsv(snakemake.output.regressions, regress(models, list(SUMMARY_METRICS)))
