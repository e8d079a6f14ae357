from pathlib import Path

from zooscope import io
from zooscope.config import EsdSettings
from zooscope.failures import write_failed_index
from zooscope.jobs import run_model_job
from zooscope.resources import parse_shard
from zooscope.spectra.delta_esd import compute_model_deltas, remove_deltas
from zooscope.spectra.esd import compute_model_esd, merge_shards
from zooscope.spectra.spectrum import resolve_device

# The model's esd folder: results/esd/{model}/index.json or results/esd/{model}/shards/{shard}.json
shard = parse_shard(snakemake.wildcards.shard) if snakemake.rule == "esd_shard" else None
out_dir = Path(snakemake.output[0]).parent
if shard:
    out_dir = out_dir.parent
settings = EsdSettings(**snakemake.params.esd)
inputs = snakemake.input
sharded = "shards" in inputs.keys()


def body(log):
    if sharded:  # a sharded model's esd job: merge the shards' indexes
        index = merge_shards([io.read_json(path) for path in inputs.shards], inputs.layers, out_dir)
    else:
        index = compute_model_esd(inputs.weights, inputs.layers, out_dir, settings,
                                  device=snakemake.resources.esd_device, shard=shard, threads=snakemake.threads,
                                  shared_cache=snakemake.resources.esd_shared_cache or None)
    if "base_weights" in inputs.keys():  # a model with a base: its updates too
        index["delta"] = compute_model_deltas(
            inputs.weights, inputs.layers, inputs.base_weights, inputs.base_layers, out_dir, settings,
            top_k=snakemake.params.delta_top_k, adapter=io.read_json(inputs.meta).get("adapter"),
            device=resolve_device(snakemake.resources.esd_device), threads=snakemake.threads,
        )
    elif not shard:
        remove_deltas(out_dir)
    io.write_json(snakemake.output[0], index)


run_model_job(
    snakemake, name=snakemake.rule, stage="esd", body=body, record=snakemake.output[0], cap_memory=True,
    upstream=[inputs.layers, *(inputs.shards if sharded else []),
              *([inputs.base_layers] if "base_layers" in inputs.keys() else [])],
    write_failed=lambda failure: write_failed_index(snakemake.output[0], snakemake.wildcards.model,
                                                    snakemake.params.esd, failure, shard),
)
