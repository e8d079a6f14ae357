from pathlib import Path

from zooscope.failures import write_failed_fetch
from zooscope.jobs import run_model_job
from zooscope.sources.fetch import fetch_model
from zooscope.zoo import ZooRow

out_dir = Path(snakemake.output.meta).parent
base = Path(snakemake.input.base_layers).parent if "base_layers" in snakemake.input.keys() else None

run_model_job(
    snakemake, name="fetch", stage="fetch", record=snakemake.output.meta,
    upstream=[snakemake.input.base_layers] if base else [],
    body=lambda log: fetch_model(ZooRow.from_dict(snakemake.params.row), out_dir, threads=snakemake.threads,
                                 base_dir=base),
    write_failed=lambda failure: write_failed_fetch(out_dir, snakemake.params.row, failure),
)
