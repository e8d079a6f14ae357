# The data-dependent Jacobian stage: one job per model whose zoo row names a data set (column
# `data`, JACOBIAN_MODELS in rules/common.smk); the per-model jac_ metrics join
# results/zoo/models.tsv (rules/aggregate.smk).
rule jacobian:
    input:
        weights="resources/models/{model}/model.safetensors",
        meta="resources/models/{model}/meta.json",
        layers="resources/models/{model}/layers.json",
        data=jacobian_data_input,
    output:
        layers="results/jacobian/{model}/layers.tsv",
        summary="results/jacobian/{model}/summary.json",
        spectra="results/jacobian/{model}/spectra.safetensors",
    params:
        data=lambda wildcards: MODELS[wildcards.model].data.as_dict(),
        settings=RUN.jacobian.as_dict(),
        # of the fit settings only this one: a fit option must not rerun the Jacobian stage
        min_evals=RUN.fit.min_evals,
        attempt=attempt_of("results/jacobian/{model}/summary.json"),
    conda:
        "../envs/torch.yaml"
    log:
        "logs/jacobian/{model}.log",
    threads: RUN.threads.jacobian
    script:
        "../scripts/jacobian.py"


# The Jacobian figures of a series (zooscope.report.jacobian_plots.plot_jacobian_series): its models with a data
# set side by side (the random-label experiment: the normal model next to the random-label one).
rule plot_jacobian:
    input:
        spectra=lambda wildcards: expand(
            "results/jacobian/{model}/spectra.safetensors", model=jacobian_series_models(wildcards)
        ),
        layers=lambda wildcards: expand(
            "results/jacobian/{model}/layers.tsv", model=jacobian_series_models(wildcards)
        ),
        metas=lambda wildcards: expand(
            "resources/models/{model}/meta.json", model=jacobian_series_models(wildcards)
        ),
    output:
        report(
            directory(f"{RESULTS}/plots/jacobian/{{series}}"),
            patterns=["{name}.png"],
            caption="../report/jacobian.rst",
            category="{series}",
            subcategory="Jacobian spectra",
            labels={"series": "{series}", "figure": "{name}"},
        ),
    params:
        models=jacobian_series_models,
    conda:
        "../envs/numeric.yaml"
    log:
        f"logs/{ZOO}/plots/jacobian/{{series}}.log",
    script:
        "../scripts/plot_jacobian.py"
