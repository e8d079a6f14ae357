rule fit:
    input:
        index="results/esd/{model}/index.json",
        tensors="resources/models/{model}/tensors.json",
    output:
        layers="results/metrics/{model}/layers.tsv",
        summary="results/metrics/{model}/summary.json",
        coverage="results/metrics/{model}/coverage.tsv",
    params:
        fit=RUN.fit.as_dict(),
        attempt=attempt_of("results/metrics/{model}/summary.json"),
    conda:
        "../envs/numeric.yaml"
    log:
        "logs/fit/{model}.log",
    threads: 1 if RUN.fit.point_estimates else RUN.threads.fit
    resources:
        mem_mb=model_resource("fit", "mem_mb"),
        runtime=model_resource("fit", "runtime"),
    script:
        "../scripts/fit.py"

