# Reports: one JSON per (benchmark, method) with scores (or where to upload the archive) and
# provenance, and the summary table over every requested pair.


rule result:
    input:
        evaluation=lambda wildcards: evaluation_file(wildcards.benchmark, wildcards.method),
        weights=lambda wildcards: method_weights(wildcards.method),
        propagate_timings=lambda wildcards: propagate_timings(wildcards.benchmark, wildcards.method),
        evaluate_timing=lambda wildcards: evaluate_timing(wildcards.benchmark, wildcards.method),
    output:
        report(
            "results/{benchmark}/{method}.json",
            caption="../report/result.rst",
            category="Results",
            subcategory="{benchmark}",
        ),
    params:
        overrides=lambda wildcards: parameter_overrides(wildcards.benchmark),
    log:
        "logs/result/{benchmark}/{method}.log",
    resources:
        **job_resources("report"),
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "vcorr report result --benchmark {wildcards.benchmark} --method {wildcards.method}"
        " --evaluation {input.evaluation} --weights {input.weights}"
        " --propagate-timings {input.propagate_timings} --evaluate-timings {input.evaluate_timing}"
        " {params.overrides} --out {output} > {log} 2>&1"


rule summary:
    input:
        [f"results/{benchmark}/{method}.json" for benchmark, method in requested_pairs()],
    output:
        report("results/summary.csv", caption="../report/summary.rst", category="Summary"),
    log:
        "logs/summary.log",
    resources:
        **job_resources("report"),
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "vcorr report summary {input} --out {output} > {log} 2>&1"
