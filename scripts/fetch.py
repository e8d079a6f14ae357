from pathlib import Path

from zooscope.jobs import job
from zooscope.sources.fetch import fetch_model
from zooscope.zoo import ZooRow

with job(snakemake, name="fetch"):
    base = Path(snakemake.input.base_layers).parent if "base_layers" in snakemake.input.keys() else None
    fetch_model(ZooRow.from_dict(snakemake.params.row), Path(snakemake.output.meta).parent, threads=snakemake.threads,
                base_dir=base)
