rule aggregate:
    input:
        metas=expand("resources/models/{model}/meta.json", model=MODELS),
        summaries=expand("results/metrics/{model}/summary.json", model=MODELS),
        jacobian=expand("results/jacobian/{model}/summary.json", model=JACOBIAN_MODELS),
    output:
        models="results/zoo/models.tsv",
        regressions="results/zoo/regressions.tsv",
    conda:
        "../envs/numeric.yaml"
    log:
        "logs/aggregate.log",
    script:
        "../scripts/aggregate.py"
