# The config and the zoo sheet, parsed once into typed objects (zooscope.config.RunConfig,
# zooscope.zoo.ZooRow), and the input functions of every rule. Parsed by every job: keep it cheap
# (no numpy/torch here). Rules pass settings in their plain form (as_dict()); scripts rebuild them.
import re
import sys
from pathlib import Path

from zooscope.config import load_schema, run_config
from zooscope.failures import attempt, results_folder
from zooscope.resources import MERGE, fetch_priority, model_shards, parse_shard, stage_resources
from zooscope.zoo import read_zoo_sheet, trajectory_series

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
# The training trajectories (zoo column `step`): series -> its checkpoints in step order.
TRAJECTORIES = trajectory_series(list(MODELS.values()))
# The report's categories: a model with a base (a fine-tune, an adapter) is shown under
# FINETUNE_CATEGORY, the figures of a trajectory under TRAJECTORY_CATEGORY, all else by series.
FINETUNE_CATEGORY = "Fine-tunes and adapters"
TRAJECTORY_CATEGORY = "Trajectories"


def model_category(model):
    row = MODELS[model]
    return FINETUNE_CATEGORY if row.base is not None else row.series
# One results folder per zoo (docs/failures.md): its tables and figures under RESULTS, its
# zoo-wide logs under logs/ZOO; per-model results (resources/models, results/esd, results/metrics,
# results/jacobian, results/plots/esd) are shared by every zoo of the working directory.
ZOO, RESULTS = results_folder(ZOO_SHEET, RUN.results)
# Esd shards per model (zoo column `shards`, else config `esd.shard_mb`; zooscope.resources). An
# adapter's weights are its base's size, unknown before the fetch: sized by its column alone.
SHARDS = {
    model: model_shards(row.shards, None if row.adapter else row.source.path, RUN.esd.shard_mb)
    for model, row in MODELS.items()
}


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    series="|".join(map(re.escape, SERIES)),


def file_source_input(wildcards):
    """The weights of a file: source (an adapter's two files for peft:), so that changing them
    reruns the model. A missing path is left to the fetch job to report (with the model's name),
    instead of stopping the whole DAG."""
    return [str(path) for path in MODELS[wildcards.model].source.local_inputs() if path.exists()]


def fetch_rule_priority(wildcards):
    """Larger local weights first (zooscope.resources.fetch_priority)."""
    return fetch_priority(MODELS[wildcards.model].source.local_inputs())


def esd_rule_priority(wildcards):
    """Above every fetch (a fetched model's esd starts while its weights are in the page cache, and
    on a small machine a one-core fetch no longer starts alone while esd jobs wait for all the
    cores); among esd jobs, larger local weights first, as rule fetch's."""
    return 1 + fetch_rule_priority(wildcards)


def trajectory_models(wildcards):
    return TRAJECTORIES[wildcards.series]


def attempt_of(output):
    """The `attempt` parameter of a per-model rule whose JSON output is `output` (a pattern of
    the wildcards): a failure record there asks for the next attempt, which Snakemake's params
    rerun trigger turns into a retry (zooscope.failures, docs/failures.md)."""
    return lambda wildcards: attempt(output.format(**wildcards))


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
        # a model with a base computes its updates in its esd job (a sharded one's merge job too,
        # which then asks for the whole model's estimate: more than the updates alone need)
        with_base = stage == "esd" and MODELS[wildcards.model].base is not None
        if stage == "esd" and SHARDS[wildcards.model] > 1 and not with_base:
            return getattr(MERGE, name)
        return getattr(stage_resources(stage, layers_json, with_base=with_base), name)

    return resource


def esd_input(wildcards):
    """An unsharded model's esd job computes from the weights; a sharded one's merges its shards.
    A model with a base (zoo column `base`) also computes its updates against the base's fetched
    weights (zooscope.spectra.delta_esd), in the esd job itself also when it is sharded; its
    meta.json names an adapter's factors. It runs after its base's esd job, so that the layers
    it shares with its base come from the shared store (config esd.shared_cache) instead of
    being computed by two jobs at once."""
    model, shards = wildcards.model, SHARDS[wildcards.model]
    inputs = {"layers": f"resources/models/{model}/layers.json"}
    if shards == 1:
        inputs["weights"] = f"resources/models/{model}/model.safetensors"
    else:
        inputs["shards"] = [f"results/esd/{model}/shards/{k}-of-{shards}.json" for k in range(1, shards + 1)]
    base = MODELS[model].base
    if base is not None:
        inputs.update(fetched_model(model, "weights", "meta"), **fetched_model(base, "weights", "layers", prefix="base_"),
                      base_index=f"results/esd/{base}/index.json")
    return inputs


def fetched_model(model, *files, prefix=""):
    """Named paths of a model's fetch outputs (weights, layers, meta), keys prefixed by ``prefix``."""
    names = {"weights": "model.safetensors", "layers": "layers.json", "meta": "meta.json"}
    return {f"{prefix}{file}": f"resources/models/{model}/{names[file]}" for file in files}


def fetch_base_input(wildcards):
    """An adapter's fetch merges it into its base's fetched weights."""
    row = MODELS[wildcards.model]
    return fetched_model(row.base, "weights", "layers", prefix="base_") if row.adapter else {}


def esd_computes(wildcards):
    """Whether this esd/esd_shard job computes eigenvalues or updates (not only merges shards)."""
    return ("shard" in wildcards.keys() or SHARDS[wildcards.model] == 1
            or MODELS[wildcards.model].base is not None)


def esd_delta_top_k(wildcards):
    """Config esd.delta_top_k for a model with a base; None for the others, which ignore it (so
    that changing it reruns only the esd jobs of models with a base)."""
    return RUN.esd.delta_top_k if MODELS[wildcards.model].base is not None else None


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


# The run summary (zooscope.report.run_summary): every failed model and every model with failed
# or skipped layers, on the console and in logs/{zoo}/run-summary.txt; it sets the exit status.
def finish_run(errored):
    from zooscope.jobs import cancel_pending_timers, exit_without_collecting
    from zooscope.report.run_summary import run_summary, write_summary

    cancel_pending_timers()  # else the process exits up to a second after the run (its docstring)

    summary = run_summary(
        ZOO, MODELS, lambda model: f"results/metrics/{model}/summary.json",
        on_layer_failure=RUN.on_layer_failure, errored=errored,
        jacobian_path=lambda model: f"results/jacobian/{model}/summary.json" if model in JACOBIAN_MODELS else None,
    )
    status = write_summary(summary, f"logs/{ZOO}/run-summary.txt")
    exit_without_collecting()  # the DAG and the run's objects: not collected on the way out
    if status and not errored:
        sys.exit(status)
