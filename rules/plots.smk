rule plot_esd:
    input:
        index="results/esd/{model}/index.json",
        layers="results/metrics/{model}/layers.tsv",
    output:
        report(
            directory("results/plots/esd/{model}"),
            patterns=["{name}.png"],
            caption="../report/esd.rst",
            category=lambda wildcards: model_category(wildcards.model),
            subcategory="{model}",
            labels={"model": "{model}", "figure": "{name}"},
        ),
    conda:
        "../envs/numeric.yaml"
    log:
        "logs/plots/esd/{model}.log",
    script:
        "../scripts/plot_esd.py"


rule plot_series:
    input:
        layers=lambda wildcards: expand(
            "results/metrics/{model}/layers.tsv", model=series_models(wildcards)
        ),
        models=f"{RESULTS}/models.tsv",
        regressions=f"{RESULTS}/regressions.tsv",
    output:
        report(
            directory(f"{RESULTS}/plots/series/{{series}}"),
            patterns=["{name}.png"],
            caption="../report/series.rst",
            category="{series}",
            subcategory="series figures",
            labels={"series": "{series}", "figure": "{name}"},
        ),
    params:
        models=series_models,
        fit=RUN.fit.as_dict(),
    conda:
        "../envs/numeric.yaml"
    log:
        f"logs/{ZOO}/plots/series/{{series}}.log",
    script:
        "../scripts/plot_series.py"
