from zooscope import io
from zooscope.config import FitSettings
from zooscope.analysis.aggregate import delta_metric_columns, join_jacobian, models_table
from zooscope.jobs import job
from zooscope.analysis.metrics import RELIABLE_METRICS, SUMMARY_METRICS
from zooscope.analysis.regression import regress

with job(snakemake, name="aggregate"):
    metas = [io.read_json(path) for path in snakemake.input.metas]
    summaries = [io.read_json(path) for path in snakemake.input.summaries]
    models = models_table(metas, summaries)
    jacobian = [io.read_json(path) for path in getattr(snakemake.input, "jacobian", [])]
    models, jacobian_metrics = join_jacobian(models, jacobian)
    io.write_tsv(snakemake.output.models, models)
    metrics = [*SUMMARY_METRICS, *RELIABLE_METRICS, *delta_metric_columns(models), *jacobian_metrics]
    io.write_tsv(snakemake.output.regressions, regress(models, metrics, level=FitSettings(**snakemake.params.fit).level))
