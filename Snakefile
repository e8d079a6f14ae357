# zooscope: audit a zoo of pretrained neural networks from their weights alone.
# Run: snakemake --cores all   (the embedded demo zoo; --config zoo=PATH for another sheet)
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")

# The workflow runs the zooscope of its own checkout (src/ beside this file), in this process and
# in every job (they inherit PYTHONPATH), whichever zooscope the environment has installed: with
# two checkouts and one environment, each runs its own code. A zooscope imported before this file
# was read (another checkout's, in the same process) cannot be replaced: then stop and say so.
CHECKOUT_SRC = Path(workflow.basedir).resolve() / "src"
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        [str(CHECKOUT_SRC)]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(CHECKOUT_SRC)]
    )
)
sys.path.insert(0, str(CHECKOUT_SRC))
import zooscope

if Path(zooscope.__file__).resolve().parent != CHECKOUT_SRC / "zooscope":
    raise WorkflowError(
        f"this workflow ({workflow.basedir}) runs the zooscope of its checkout, {CHECKOUT_SRC / 'zooscope'}, "
        f"but this process already imported another one: {Path(zooscope.__file__).parent}; run it in a fresh "
        "process (the snakemake command)"
    )

# The jobs inherit this. They allocate large arrays once, and under the kernel's usual
# transparent-huge-page policy (defrag=madvise) numpy's huge-page advice makes every first
# touch wait for memory compaction: 5 s of system time in VGG16's esd job, 1 s without
# (benchmarks/RESULTS.md). A value set by the user wins.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/fetch.smk"
include: "rules/esd.smk"
include: "rules/fit.smk"
include: "rules/jacobian.smk"
include: "rules/aggregate.smk"
include: "rules/trajectory.smk"
include: "rules/plots.smk"
include: "rules/report.smk"


rule all:
    input:
        f"{RESULTS}/models.tsv",
        f"{RESULTS}/regressions.tsv",
        expand("results/plots/esd/{model}", model=MODELS),
        expand(f"{RESULTS}/plots/series/{{series}}", series=SERIES),
        expand(f"{RESULTS}/plots/jacobian/{{series}}", series=JACOBIAN_SERIES),
        f"{RESULTS}/discrimination.tsv",
        f"{RESULTS}/plots/discrimination",
        f"{RESULTS}/audit.tsv",
        f"{RESULTS}/summary.html",
        expand("results/plots/trajectory/{series}", series=TRAJECTORIES),
        [f"{RESULTS}/trajectories.tsv"] if TRAJECTORIES else [],
    default_target: True


# The run summary and the exit status (finish_run in rules/common.smk).
onsuccess:
    finish_run(errored=False)


onerror:
    finish_run(errored=True)
