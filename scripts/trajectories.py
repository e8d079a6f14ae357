import pandas as pd

from zooscope import io
from zooscope.analysis.trajectory import TRAJECTORY_COLUMNS
from zooscope.jobs import job

with job(snakemake, name="trajectories"):
    tables = [pd.read_csv(path, sep="\t", dtype={"series": str}) for path in snakemake.input]
    io.write_tsv(snakemake.output[0], pd.concat(tables, ignore_index=True)[list(TRAJECTORY_COLUMNS)])
