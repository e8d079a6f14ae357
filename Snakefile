# zooscope: audit a zoo of pretrained neural networks from their weights alone.
# Run: snakemake --cores all   (the embedded demo zoo; --config zoo=PATH for another sheet)
import os

from snakemake.utils import min_version

min_version("9.0")

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
include: "rules/plots.smk"
include: "rules/report.smk"


rule all:
    input:
        "results/zoo/models.tsv",
        "results/zoo/regressions.tsv",
        expand("results/plots/esd/{model}", model=MODELS),
        expand("results/plots/series/{series}", series=SERIES),
        expand("results/plots/jacobian/{series}", series=JACOBIAN_SERIES),
        "results/zoo/discrimination.tsv",
        "results/plots/discrimination",
        "results/zoo/audit.tsv",
        "results/zoo/summary.html",
    default_target: True
