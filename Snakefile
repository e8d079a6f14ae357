# zooscope: audit a zoo of pretrained neural networks from their weights alone.
# Run: snakemake --cores all   (the embedded demo zoo; --config zoo=PATH for another sheet)
from snakemake.utils import min_version

min_version("9.0")


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
