# Config and zoo sheet validation, and the input functions of every rule. Parsed by every job:
# keep it cheap (no numpy/torch here).
import re
from pathlib import Path

from zooscope.config import load_schema, read_zoo_sheet, validate_config
from zooscope.resources import stage_resources

SCHEMAS = Path(workflow.basedir) / "schemas"

config.update(
    validate_config(
        config, load_schema(SCHEMAS / "config.schema.yaml"), source="config (config.yaml and --config)"
    )
)
ZOO_SHEET = Path(config["zoo"])
MODELS = {
    row["model"]: row
    for row in read_zoo_sheet(ZOO_SHEET, load_schema(SCHEMAS / "zoo.schema.yaml"))
}
SERIES = sorted({row["series"] for row in MODELS.values()})


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    series="|".join(map(re.escape, SERIES)),


def file_source_input(wildcards):
    """The weights of a file: source, so that changing them reruns the model. A missing path is
    left to the fetch job to report (with the model's name), instead of stopping the whole DAG."""
    source = MODELS[wildcards.model]["source"]
    if not source.startswith("file:"):
        return []
    path = ZOO_SHEET.parent / source[len("file:") :]
    return [str(path)] if path.exists() else []


def series_models(wildcards):
    return [model for model, row in MODELS.items() if row["series"] == wildcards.series]


def model_resource(stage, name):
    """A callable resource (`mem_mb` or `runtime`) of a model's esd or fit job, estimated from the
    model's layers.json; Snakemake evaluates it again when the job is scheduled, once the fetch
    job has written that file (zooscope.resources documents the estimate)."""

    def resource(wildcards):
        layers_json = f"resources/models/{wildcards.model}/layers.json"
        return getattr(stage_resources(stage, layers_json), name)

    return resource


# The models of the Jacobian stage (rules/jacobian.smk): rows that name a data set.
JACOBIAN_MODELS = [model for model, row in MODELS.items() if row.get("data")]


def jacobian_data_input(wildcards):
    """A data file or folder named by the row, so that changing it reruns the model's job; a
    missing path is left to the job to report (as for file: sources)."""
    data = MODELS[wildcards.model].get("data") or ""
    path = ZOO_SHEET.parent / data
    return [str(path)] if data != "digits" and path.exists() else []
