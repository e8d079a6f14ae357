rule esd:
    input:
        weights="resources/models/{model}/model.safetensors",
        layers="resources/models/{model}/layers.json",
    output:
        index="results/esd/{model}/index.json",
    params:
        # Only settings that change eigenvalues: a fit option must never rerun this stage.
        conv2d=config["conv2d"],
        normalize=config["normalize"],
    conda:
        "../envs/numeric.yaml"
    log:
        "logs/esd/{model}.log",
    threads: config["threads"]["esd"]
    script:
        "../scripts/esd.py"
