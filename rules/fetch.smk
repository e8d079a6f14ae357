rule fetch:
    input:
        unpack(fetch_base_input),
        source=file_source_input,
    output:
        weights="resources/models/{model}/model.safetensors",
        layers="resources/models/{model}/layers.json",
        meta="resources/models/{model}/meta.json",
        tensors="resources/models/{model}/tensors.json",
    params:
        # What the outputs depend on (zooscope.zoo.ZooRow.fetch_form, the layer selection with
        # config select filled in): a data set, a shard count or (but for an adapter) a base given
        # to a model must not refetch (retrain) it.
        row=lambda wildcards: MODELS[wildcards.model].fetch_form(),
        attempt=attempt_of("resources/models/{model}/meta.json"),
    conda:
        "../envs/torch.yaml"
    log:
        "logs/fetch/{model}.log",
    threads: RUN.threads.fetch
    priority: fetch_rule_priority
    script:
        "../scripts/fetch.py"
