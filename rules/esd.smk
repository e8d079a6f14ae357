# Only settings that change eigenvalues, as params of both rules: a fit option must never rerun
# this stage. (config device is read by the script: it changes eigenvalues by rounding only.)
ESD_SETTINGS = {
    name: config[name] for name in ("conv2d", "normalize", "conv2d_fft_size", "randomize")
}


rule esd_shard:
    # Shard k of K of a model split by the zoo column `shards` (or config shard_mb): the entries
    # of its share of the layers; rule esd merges the shards' indexes.
    input:
        weights="resources/models/{model}/model.safetensors",
        layers="resources/models/{model}/layers.json",
    output:
        shard="results/esd/{model}/shards/{shard}.json",
    wildcard_constraints:
        shard=r"[1-9][0-9]*-of-[1-9][0-9]*",
    params:
        **ESD_SETTINGS,
    conda:
        "../envs/numeric.yaml"
    log:
        "logs/esd/{model}.{shard}.log",
    threads: config["threads"]["esd"]
    priority: 1  # as rule esd's
    resources:
        mem_mb=model_resource("esd", "mem_mb"),
        runtime=model_resource("esd", "runtime"),
        gpu=esd_gpu,
    script:
        "../scripts/esd.py"


rule esd:
    input:
        unpack(esd_input),
    output:
        index="results/esd/{model}/index.json",
    params:
        **ESD_SETTINGS,
        # only a model with a base compares top singular directions: others ignore the setting
        delta_top_k=lambda wildcards: config["delta_top_k"] if MODELS[wildcards.model].get("base") else None,
    conda:
        "../envs/numeric.yaml"
    log:
        "logs/esd/{model}.log",
    threads: esd_threads
    # Before further fetches: a fetched model's esd starts while its weights are in the page
    # cache, and on a small machine a one-core fetch no longer starts alone while esd jobs wait
    # for all the cores.
    priority: 1
    resources:
        mem_mb=model_resource("esd", "mem_mb"),
        runtime=model_resource("esd", "runtime"),
        gpu=esd_gpu,
    script:
        "../scripts/esd.py"
