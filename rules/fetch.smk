rule fetch:
    input:
        source=file_source_input,
    output:
        weights="resources/models/{model}/model.safetensors",
        layers="resources/models/{model}/layers.json",
        meta="resources/models/{model}/meta.json",
    params:
        row=lambda wildcards: MODELS[wildcards.model],
        sheet_dir=str(ZOO_SHEET.parent),
    conda:
        "../envs/torch.yaml"
    log:
        "logs/fetch/{model}.log",
    threads: config["threads"]["fetch"]
    script:
        "../scripts/fetch.py"
