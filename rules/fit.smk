rule fit:
    input:
        index="results/esd/{model}/index.json",
    output:
        layers="results/metrics/{model}/layers.tsv",
    params:
        min_evals=config["min_evals"],
        floor=config["fit"]["floor"],
        kind=config["fit"]["kind"],
    conda:
        "../envs/numeric.yaml"
    log:
        "logs/fit/{model}.log",
    resources:
        mem_mb=model_resource("fit", "mem_mb"),
        runtime=model_resource("fit", "runtime"),
    script:
        "../scripts/fit.py"


rule summarize:
    input:
        layers="results/metrics/{model}/layers.tsv",
    output:
        summary="results/metrics/{model}/summary.json",
    conda:
        "../envs/numeric.yaml"
    log:
        "logs/summarize/{model}.log",
    script:
        "../scripts/summarize.py"
