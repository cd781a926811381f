# Scoring: DAVIS J&F, JHMDB PCK and VIP mIoU locally; for server-scored benchmarks (YouTube-VOS,
# DAVIS test-dev) the submission archive, never a made-up score.


rule score:
    input:
        unpack(benchmark_data),
        unpack(scorer_lists),
        predictions="results/predictions/{benchmark}/{method}/all",
    output:
        "results/scores/{benchmark}/{method}.json",
    log:
        "logs/score/{benchmark}/{method}.log",
    benchmark:
        "logs/benchmarks/score/{benchmark}/{method}.tsv"
    wildcard_constraints:
        benchmark=one_of(benchmarks_scored_locally()),
    conda:
        "../../envs/vcorr.yaml"
    threads: job_resources("score")["cpus_per_task"]
    resources:
        **job_resources("score"),
    params:
        scorer=lambda wildcards: BENCHMARKS[wildcards.benchmark]["scorer"],
        # This scorer's code digest: a change of it reruns its scorings only.
        code=lambda wildcards: scoring_code(BENCHMARKS[wildcards.benchmark]["scorer"]),
        root=lambda wildcards: data_root(wildcards.benchmark),
        extra=scorer_arguments,
    shell:
        "vcorr score {params.scorer} --benchmark {wildcards.benchmark} --data-root {params.root}"
        " --predictions {input.predictions} --out {output} {params.extra} > {log} 2>&1"


rule export:
    input:
        lambda wildcards: prediction_parts(wildcards.benchmark, wildcards.method),
    output:
        "results/{benchmark}/{method}.zip",
    log:
        "logs/export/{benchmark}/{method}.log",
    benchmark:
        "logs/benchmarks/export/{benchmark}/{method}.tsv"
    wildcard_constraints:
        benchmark=one_of(benchmarks_scored_by("server")),
    conda:
        "../../envs/vcorr.yaml"
    threads: job_resources("export")["cpus_per_task"]
    resources:
        **job_resources("export"),
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
    log:
        "logs/crosscheck/{benchmark}/{method}.log",
    benchmark:
        "logs/benchmarks/crosscheck/{benchmark}/{method}.tsv"
    wildcard_constraints:
        benchmark=one_of(CROSSCHECKED),
    conda:
        "../../envs/davis2017-eval.yaml"
    threads: job_resources("score")["cpus_per_task"]
    resources:
        **job_resources("score"),
    params:
        root=lambda wildcards: data_root(wildcards.benchmark),
        subset=lambda wildcards: BENCHMARKS[wildcards.benchmark]["subset"],
    shell:
        "vcorr report crosscheck-davis --data-root {params.root} --predictions {input.predictions}"
        " --subset {params.subset} --scores {input.scores} --out {output} > {log} 2>&1"
