# Training trajectories (zoo column `step`, docs/finetunes.md): per series of checkpoints its
# settling table and figures, from its own checkpoints' files only (adding a checkpoint to one run
# reruns that run's job and the zoo table, no other run's); then the zoo's table of all runs.
# Its figures are labelled by name alone: with a second, constant label (the series) the report
# app lists one row for the two figures of a run and shows only the first.


rule trajectory:
    input:
        metas=lambda wildcards: expand("resources/models/{model}/meta.json", model=trajectory_models(wildcards)),
        summaries=lambda wildcards: expand(
            "results/metrics/{model}/summary.json", model=trajectory_models(wildcards)
        ),
        layers=lambda wildcards: expand("results/metrics/{model}/layers.tsv", model=trajectory_models(wildcards)),
    output:
        table="results/trajectories/{series}.tsv",
        plots=report(
            directory("results/plots/trajectory/{series}"),
            patterns=["{name}.png"],
            caption="../report/trajectory.rst",
            category=TRAJECTORY_CATEGORY,
            subcategory="{series}",
            labels={"figure": "{name}"},
        ),
    params:
        steps=lambda wildcards: {model: MODELS[model].step for model in trajectory_models(wildcards)},
    conda:
        "../envs/numeric.yaml"
    log:
        "logs/trajectory/{series}.log",
    script:
        "../scripts/trajectory.py"


rule trajectories:
    input:
        expand("results/trajectories/{series}.tsv", series=TRAJECTORIES),
    output:
        report(
            f"{RESULTS}/trajectories.tsv",
            caption="../report/trajectories.rst",
            category="Zoo",
            subcategory="tables",
        ),
    conda:
        "../envs/numeric.yaml"
    log:
        f"logs/{ZOO}/trajectories.log",
    script:
        "../scripts/trajectories.py"
