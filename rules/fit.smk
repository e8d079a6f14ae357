rule fit:
    input:
        index="results/esd/{model}/index.json",
    output:
        layers="results/metrics/{model}/layers.tsv",
        summary="results/metrics/{model}/summary.json",
    params:
        fit=RUN.fit.as_dict(),
    conda:
        "../envs/numeric.yaml"
    log:
        "logs/fit/{model}.log",
    resources:
        mem_mb=model_resource("fit", "mem_mb"),
        runtime=model_resource("fit", "runtime"),
    script:
        "../scripts/fit.py"

