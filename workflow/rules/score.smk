# Scoring: DAVIS J&F, JHMDB PCK and VIP mIoU locally; for server-scored benchmarks (YouTube-VOS,
# DAVIS test-dev) the submission archive, never a made-up score.


rule score_davis:
    input:
        unpack(benchmark_data),
        predictions="results/predictions/{benchmark}/{method}/all",
    output:
        "results/scores/{benchmark}/{method}.json",
    params:
        root=lambda wildcards: data_root(wildcards.benchmark),
        subset=lambda wildcards: BENCHMARKS[wildcards.benchmark]["subset"],
        year=lambda wildcards: BENCHMARKS[wildcards.benchmark]["year"],
    wildcard_constraints:
        benchmark=one_of(benchmarks_scored_by("davis")),
    log:
        "logs/score/{benchmark}/{method}.log",
    benchmark:
        "logs/benchmarks/score/{benchmark}/{method}.tsv"
    threads: job_resources("score")["cpus_per_task"]
    resources:
        **job_resources("score"),
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "vcorr score davis --davis-root {params.root} --results {input.predictions}"
        " --subset {params.subset} --year {params.year} --jobs {threads} --out {output} > {log} 2>&1"


rule score_jhmdb:
    input:
        unpack(benchmark_data),
        predictions="results/predictions/{benchmark}/{method}/all",
        split=lambda wildcards: registry_list(wildcards.benchmark),
    output:
        "results/scores/{benchmark}/{method}.json",
    params:
        root=lambda wildcards: data_root(wildcards.benchmark),
    wildcard_constraints:
        benchmark=one_of(benchmarks_scored_by("jhmdb")),
    log:
        "logs/score/{benchmark}/{method}.log",
    benchmark:
        "logs/benchmarks/score/{benchmark}/{method}.tsv"
    threads: job_resources("score")["cpus_per_task"]
    resources:
        **job_resources("score"),
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "vcorr score jhmdb --jhmdb-root {params.root} --split {input.split}"
        " --predictions {input.predictions} --out {output} > {log} 2>&1"


rule score_vip:
    input:
        unpack(benchmark_data),
        predictions="results/predictions/{benchmark}/{method}/all",
    output:
        "results/scores/{benchmark}/{method}.json",
    params:
        root=lambda wildcards: data_root(wildcards.benchmark),
    wildcard_constraints:
        benchmark=one_of(benchmarks_scored_by("vip")),
    log:
        "logs/score/{benchmark}/{method}.log",
    benchmark:
        "logs/benchmarks/score/{benchmark}/{method}.tsv"
    threads: job_resources("score")["cpus_per_task"]
    resources:
        **job_resources("score"),
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "vcorr score vip --vip-root {params.root} --results {input.predictions} --out {output} > {log} 2>&1"


rule export:
    input:
        lambda wildcards: prediction_parts(wildcards.benchmark, wildcards.method),
    output:
        "results/{benchmark}/{method}.zip",
    wildcard_constraints:
        benchmark=one_of(benchmarks_scored_by("server")),
    log:
        "logs/export/{benchmark}/{method}.log",
    benchmark:
        "logs/benchmarks/export/{benchmark}/{method}.tsv"
    threads: job_resources("export")["cpus_per_task"]
    resources:
        **job_resources("export"),
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "vcorr export --benchmark {wildcards.benchmark} --predictions {input} --out {output} > {log} 2>&1"


# Optional (config scoring.crosscheck_davis): vcorr's J&F against the official
# davis2017-evaluation, installed from its repository in its own environment.
rule crosscheck_davis:
    input:
        unpack(benchmark_data),
        predictions="results/predictions/{benchmark}/{method}/all",
        scores="results/scores/{benchmark}/{method}.json",
    output:
        "results/crosscheck/{benchmark}/{method}.json",
    params:
        root=lambda wildcards: data_root(wildcards.benchmark),
        subset=lambda wildcards: BENCHMARKS[wildcards.benchmark]["subset"],
    wildcard_constraints:
        benchmark=one_of(CROSSCHECKED),
    log:
        "logs/crosscheck/{benchmark}/{method}.log",
    benchmark:
        "logs/benchmarks/crosscheck/{benchmark}/{method}.tsv"
    threads: job_resources("score")["cpus_per_task"]
    resources:
        **job_resources("score"),
    conda:
        "../../envs/davis2017-eval.yaml"
    shell:
        "vcorr report crosscheck-davis --davis-root {params.root} --results {input.predictions}"
        " --subset {params.subset} --scores {input.scores} --out {output} > {log} 2>&1"
