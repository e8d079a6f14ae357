rule aggregate:
    input:
        metas=expand("resources/models/{model}/meta.json", model=MODELS),
        summaries=expand("results/metrics/{model}/summary.json", model=MODELS),
        jacobian=expand("results/jacobian/{model}/summary.json", model=JACOBIAN_MODELS),
    output:
        models=report(
            f"{RESULTS}/models.tsv", caption="../report/models.rst", category="Zoo", subcategory="tables"
        ),
        regressions=report(
            f"{RESULTS}/regressions.tsv", caption="../report/regressions.rst", category="Zoo", subcategory="tables"
        ),
    params:
        fit=RUN.fit.as_dict(),
    conda:
        "../envs/numeric.yaml"
    log:
        f"logs/{ZOO}/aggregate.log",
    script:
        "../scripts/aggregate.py"
