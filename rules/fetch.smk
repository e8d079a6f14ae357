rule fetch:
    input:
        unpack(fetch_base_input),
        source=file_source_input,
    output:
        weights="resources/models/{model}/model.safetensors",
        layers="resources/models/{model}/layers.json",
        meta="resources/models/{model}/meta.json",
    params:
        # The row without its data columns (rules/jacobian.smk) and, but for an adapter, its base:
        # giving a model a data set or a base must not refetch (retrain) it.
        row=lambda wildcards: {
            key: value
            for key, value in MODELS[wildcards.model].items()
            if key not in ("data", "data_samples")
            and (key != "base" or wildcards.model in ADAPTERS)
        },
        sheet_dir=str(ZOO_SHEET.parent),
    conda:
        "../envs/torch.yaml"
    log:
        "logs/fetch/{model}.log",
    threads: config["threads"]["fetch"]
    script:
        "../scripts/fetch.py"
