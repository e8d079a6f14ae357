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
        conv2d_fft_size=config["conv2d_fft_size"],
        randomize=config["randomize"],
    conda:
        "../envs/numeric.yaml"
    log:
        "logs/esd/{model}.log",
    threads: config["threads"]["esd"]
    resources:
        mem_mb=model_resource("esd", "mem_mb"),
        runtime=model_resource("esd", "runtime"),
        gpu=1 if config["slurm_gpu"] else 0,
    script:
        "../scripts/esd.py"
