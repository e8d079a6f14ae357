# Only the settings that change eigenvalues (zooscope.config.EsdSettings) are params of both
# rules: a fit option must never rerun this stage. The device changes eigenvalues by rounding only,
# and the shared store (esd.shared_cache) only where they are kept, so both reach the script as
# resources (esd_device, esd_shared_cache), which are no rerun trigger: switching them reruns
# nothing. esd.delta_top_k is a param of the esd jobs of models with a base alone.


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
        esd=RUN.esd.settings.as_dict(),
        attempt=attempt_of("results/esd/{model}/shards/{shard}.json"),
    conda:
        "../envs/numeric.yaml"
    log:
        "logs/esd/{model}.{shard}.log",
    threads: RUN.threads.esd
    priority: esd_rule_priority
    resources:
        mem_mb=model_resource("esd", "mem_mb"),
        runtime=model_resource("esd", "runtime"),
        gpu=esd_gpu,
        esd_device=RUN.esd.device,
        esd_shared_cache=RUN.esd.shared_cache or "",
    script:
        "../scripts/esd.py"


rule esd:
    input:
        unpack(esd_input),
    output:
        index="results/esd/{model}/index.json",
    params:
        esd=RUN.esd.settings.as_dict(),
        delta_top_k=esd_delta_top_k,
        attempt=attempt_of("results/esd/{model}/index.json"),
    conda:
        "../envs/numeric.yaml"
    log:
        "logs/esd/{model}.log",
    threads: esd_threads
    priority: esd_rule_priority
    resources:
        mem_mb=model_resource("esd", "mem_mb"),
        runtime=model_resource("esd", "runtime"),
        gpu=esd_gpu,
        esd_device=RUN.esd.device,
        esd_shared_cache=RUN.esd.shared_cache or "",
    script:
        "../scripts/esd.py"
