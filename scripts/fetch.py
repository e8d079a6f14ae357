from pathlib import Path

from zooscope.jobs import job
from zooscope.sources import fetch_model

with job(snakemake, name="fetch"):
    fetch_model(
        dict(snakemake.params.row),
        Path(snakemake.output.meta).parent,
        sheet_dir=Path(snakemake.params.sheet_dir),
        threads=snakemake.threads,
        base_dir=Path(snakemake.input.base_layers).parent if "base_layers" in snakemake.input.keys() else None,
    )
