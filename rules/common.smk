# The config and the zoo sheet, parsed once into typed objects (zooscope.config.RunConfig,
# zooscope.zoo.ZooRow), and the input functions of every rule. Parsed by every job: keep it cheap
# (no numpy/torch here). Rules pass settings in their plain form (as_dict()); scripts rebuild them.
import re
from pathlib import Path

from zooscope.config import load_schema, run_config
from zooscope.resources import MERGE, model_shards, parse_shard, stage_resources
from zooscope.zoo import read_zoo_sheet

SCHEMAS = Path(workflow.basedir) / "schemas"

RUN = run_config(
    config, load_schema(SCHEMAS / "config.schema.yaml"), source="config (config.yaml and --config)"
)
ZOO_SHEET = RUN.zoo
# The zoo's rows, parsed and checked (zooscope.zoo.ZooRow): model id -> row; config select fills
# the layer selection that a row's own columns leave unset (zooscope.sources.selection).
MODELS = {
    row.model: row.with_selection_defaults(RUN.select)
    for row in read_zoo_sheet(ZOO_SHEET, load_schema(SCHEMAS / "zoo.schema.yaml"))
}
SERIES = sorted({row.series for row in MODELS.values()})
# Esd shards per model (zoo column `shards`, else config `shard_mb`; zooscope.resources).
SHARDS = {
    model: model_shards(row.shards, row.source.path, RUN.esd.shard_mb) for model, row in MODELS.items()
}


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    series="|".join(map(re.escape, SERIES)),


def file_source_input(wildcards):
    """The weights of a file: source, so that changing them reruns the model. A missing path is
    left to the fetch job to report (with the model's name), instead of stopping the whole DAG."""
    path = MODELS[wildcards.model].source.path
    return [str(path)] if path is not None and path.exists() else []


def series_models(wildcards):
    return [model for model, row in MODELS.items() if row.series == wildcards.series]


def model_resource(stage, name):
    """A callable resource (`mem_mb` or `runtime`) of a model's esd (or esd shard) or fit job,
    estimated from the model's layers.json; Snakemake evaluates it again when the job is
    scheduled, once the fetch job has written that file (zooscope.resources documents the
    estimate). The esd job of a sharded model only merges its shards: MERGE."""

    def resource(wildcards):
        layers_json = f"resources/models/{wildcards.model}/layers.json"
        if "shard" in wildcards.keys():
            return getattr(stage_resources(stage, layers_json, parse_shard(wildcards.shard)), name)
        if stage == "esd" and SHARDS[wildcards.model] > 1:
            return getattr(MERGE, name)
        return getattr(stage_resources(stage, layers_json), name)

    return resource


def esd_input(wildcards):
    """An unsharded model's esd job computes from the weights; a sharded one's merges its shards."""
    model, shards = wildcards.model, SHARDS[wildcards.model]
    layers = f"resources/models/{model}/layers.json"
    if shards == 1:
        return {"weights": f"resources/models/{model}/model.safetensors", "layers": layers}
    shard_files = [f"results/esd/{model}/shards/{k}-of-{shards}.json" for k in range(1, shards + 1)]
    return {"layers": layers, "shards": shard_files}


def esd_computes(wildcards):
    """Whether this esd/esd_shard job computes eigenvalues (not only merges shards)."""
    return "shard" in wildcards.keys() or SHARDS[wildcards.model] == 1


def esd_gpu(wildcards):
    """One GPU for a computing esd job when config esd.device is cuda (SLURM: --gpus=1)."""
    return int(RUN.esd.device == "cuda" and esd_computes(wildcards))


def esd_threads(wildcards):
    return RUN.threads.esd if esd_computes(wildcards) else 1


# The models of the Jacobian stage (rules/jacobian.smk): rows that name a data set.
JACOBIAN_MODELS = [model for model, row in MODELS.items() if row.data is not None]
# The series with at least one such model: each gets results/plots/jacobian/{series}.
JACOBIAN_SERIES = sorted({MODELS[model].series for model in JACOBIAN_MODELS})


def jacobian_series_models(wildcards):
    return [model for model in JACOBIAN_MODELS if MODELS[model].series == wildcards.series]


def jacobian_data_input(wildcards):
    """A data file or folder named by the row, so that changing it reruns the model's job; a
    missing path is left to the job to report (as for file: sources)."""
    path = MODELS[wildcards.model].data.path  # None: the built-in digits
    return [str(path)] if path is not None and path.exists() else []
