from pathlib import Path

from zooscope import io
from zooscope.config import EsdSettings
from zooscope.spectra.delta_esd import compute_model_deltas, remove_deltas
from zooscope.spectra.esd import compute_model_esd, merge_shards
from zooscope.spectra.spectrum import resolve_device
from zooscope.jobs import job
from zooscope.resources import parse_shard

# The model's esd folder: results/esd/{model}/index.json or results/esd/{model}/shards/{shard}.json
shard = parse_shard(snakemake.wildcards.shard) if snakemake.rule == "esd_shard" else None
out_dir = Path(snakemake.output[0]).parent
if shard:
    out_dir = out_dir.parent

settings = EsdSettings(**snakemake.params.esd)
with job(snakemake, name=snakemake.rule):
    if "shards" in snakemake.input.keys():  # a sharded model's esd job: merge the shards' indexes
        index = merge_shards([io.read_json(path) for path in snakemake.input.shards], snakemake.input.layers,
                             out_dir)
    else:
        index = compute_model_esd(
            snakemake.input.weights,
            snakemake.input.layers,
            out_dir,
            settings,
            device=snakemake.resources.esd_device,
            shard=shard,
            threads=snakemake.threads,
            shared_cache=snakemake.resources.esd_shared_cache or None,
        )
    if "base_weights" in snakemake.input.keys():  # a model with a base: its updates too
        index["delta"] = compute_model_deltas(
            snakemake.input.weights, snakemake.input.layers, snakemake.input.base_weights,
            snakemake.input.base_layers, out_dir, settings, top_k=snakemake.params.delta_top_k,
            adapter=io.read_json(snakemake.input.meta).get("adapter"),
            device=resolve_device(snakemake.resources.esd_device), threads=snakemake.threads,
        )
    elif not shard:
        remove_deltas(out_dir)
    io.write_json(snakemake.output[0], index)
