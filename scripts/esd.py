from pathlib import Path

from zooscope import io
from zooscope.config import EsdSettings
from zooscope.spectra.esd import compute_model_esd, merge_shards
from zooscope.jobs import job
from zooscope.resources import parse_shard

# The model's esd folder: results/esd/{model}/index.json or results/esd/{model}/shards/{shard}.json
shard = parse_shard(snakemake.wildcards.shard) if snakemake.rule == "esd_shard" else None
out_dir = Path(snakemake.output[0]).parent
if shard:
    out_dir = out_dir.parent

with job(snakemake, name=snakemake.rule):
    if "shards" in snakemake.input.keys():  # a sharded model's esd job: merge the shards' indexes
        index = merge_shards([io.read_json(path) for path in snakemake.input.shards], snakemake.input.layers,
                             out_dir)
    else:
        index = compute_model_esd(
            snakemake.input.weights,
            snakemake.input.layers,
            out_dir,
            EsdSettings(**snakemake.params.esd),
            device=snakemake.resources.esd_device,
            shard=shard,
            threads=snakemake.threads,
        )
    io.write_json(snakemake.output[0], index)
