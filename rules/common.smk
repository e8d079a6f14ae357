# Config and zoo sheet validation, and the input functions of every rule. Parsed by every job:
# keep it cheap (no numpy/torch here).
import re
from pathlib import Path

from zooscope.config import load_schema, read_zoo_sheet, validate_config

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
