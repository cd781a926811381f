# Label propagation: one job per (benchmark, method), or config-many shards for benchmarks an
# evaluation server scores (their parts are gathered by `vcorr export`).


rule propagate:
    input:
        unpack(benchmark_data),
        weights=lambda wildcards: method_weights(wildcards.method),
    output:
        directory("results/predictions/{benchmark}/{method}/{part}"),
    log:
        "logs/propagate/{benchmark}/{method}.{part}.log",
    benchmark:
        "logs/benchmarks/propagate/{benchmark}/{method}.{part}.tsv"
    conda:
        "../../envs/vcorr.yaml"
    threads: job_resources("propagate")["cpus_per_task"]
    resources:
        **job_resources("propagate"),
    params:
        data_root=lambda wildcards: data_root(wildcards.benchmark),
        # The method's settings for this benchmark: a change reruns this benchmark only.
        settings=propagation_settings,
        # The prediction code's digest: a change of vcorr that alters predictions reruns them.
        code=lambda wildcards: prediction_code(),
        overrides=lambda wildcards: parameter_overrides(wildcards.benchmark),
        shard=shard_argument,
        device=config["propagation"]["device"],
        weights_root=WEIGHTS_ROOT,
    shell:
        "vcorr propagate --benchmark {wildcards.benchmark} --data-root {params.data_root}"
        " --method-config {wildcards.method} --weights-root {params.weights_root} --device {params.device}"
        " {params.shard} {params.overrides} --out {output} > {log} 2>&1"
