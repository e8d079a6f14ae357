# Zoo-wide analyses (good versus bad, per-model audit) and what `snakemake --report` shows:
# every report() output has a caption in report/ and is grouped by series (category) and model
# (subcategory); zoo-wide tables and the summary go under "Zoo", a fine-tune's or adapter's figures
# and card under "Fine-tunes and adapters", a training run's figures under "Trajectories"
# (rules/common.smk: model_category).


rule discrimination:
    input:
        models=f"{RESULTS}/models.tsv",
        metas=expand("resources/models/{model}/meta.json", model=MODELS),
    output:
        table=report(
            f"{RESULTS}/discrimination.tsv",
            caption="../report/discrimination.rst",
            category="Zoo",
            subcategory="tables",
        ),
        # one figure per label-noise series, shown with that series' figures
        plots=report(
            directory(f"{RESULTS}/plots/discrimination"),
            patterns=["{series}.png"],
            caption="../report/noise_ladder.rst",
            category="{series}",
            subcategory="series figures",
            labels={"series": "{series}", "figure": "label noise ladder"},
        ),
    conda:
        "../envs/numeric.yaml"
    log:
        f"logs/{ZOO}/discrimination.log",
    script:
        "../scripts/discrimination.py"


# One job for every model's card: a card compares its model with its series, and one job is far
# cheaper than a job per model (each job pays the interpreter's start-up).
rule audit:
    input:
        discrimination=f"{RESULTS}/discrimination.tsv",
        models=f"{RESULTS}/models.tsv",
        metas=expand("resources/models/{model}/meta.json", model=MODELS),
        layers=expand("results/metrics/{model}/layers.tsv", model=MODELS),
        layer_lists=expand("resources/models/{model}/layers.json", model=MODELS),
    output:
        table=report(
            f"{RESULTS}/audit.tsv",
            caption="../report/audit.rst",
            category="Zoo",
            subcategory="tables",
        ),
        summary_md=f"{RESULTS}/summary.md",
        summary_html=report(
            f"{RESULTS}/summary.html",
            caption="../report/summary.rst",
            category="Zoo",
            subcategory="summary",
        ),
        cards=expand(f"{RESULTS}/audit/{{model}}.md", model=MODELS),
        card_pages=[
            report(
                f"{RESULTS}/audit/{model}.html",
                caption="../report/audit_card.rst",
                category=model_category(model),
                subcategory=model,
            )
            for model in MODELS
        ],
    params:
        models=list(MODELS),
        series=[row.series for row in MODELS.values()],
        bases={model: row.base for model, row in MODELS.items()},
        fit=RUN.fit.as_dict(),
        shared_cache=RUN.esd.shared_cache is not None,
    conda:
        "../envs/numeric.yaml"
    log:
        f"logs/{ZOO}/audit.log",
    script:
        "../scripts/audit.py"
