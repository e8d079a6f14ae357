# The data-dependent Jacobian stage: one job per model whose zoo row names a data set (column
# `data`, JACOBIAN_MODELS in rules/common.smk); the per-model jac_ metrics join
# results/zoo/models.tsv (rules/aggregate.smk).
rule jacobian:
    input:
        meta="resources/models/{model}/meta.json",
        layers="resources/models/{model}/layers.json",
        data=jacobian_data_input,
    output:
        layers="results/jacobian/{model}/layers.tsv",
        summary="results/jacobian/{model}/summary.json",
    params:
        data=lambda wildcards: MODELS[wildcards.model]["data"],
        samples=lambda wildcards: int(MODELS[wildcards.model].get("data_samples") or 512),
        sheet_dir=str(ZOO_SHEET.parent),
        settings=config["jacobian"],
        min_evals=config["min_evals"],
    conda:
        "../envs/torch.yaml"
    log:
        "logs/jacobian/{model}.log",
    threads: config["threads"]["jacobian"]
    script:
        "../scripts/jacobian.py"
