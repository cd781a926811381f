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
        # A change of the code that trains a model this method reads re-flags the result (it
        # names models trained by other code; retraining stays `--forcerun train`).
        training_code=lambda wildcards: models_training_code(wildcards.method),
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


# Every requested method under both protocols (config/protocols.yaml): its own protocol's cell
# is its result above, the other's that of <method>@<protocol>.
rule cross_protocol:
    input:
        sorted({f"results/{cell.benchmark}/{cell.evaluated_as}.json" for cell in cross_protocol_cells() if cell.evaluated_as}),
    output:
        report("results/cross_protocol.csv", caption="../report/cross_protocol.rst", category="Summary"),
    params:
        methods=" ".join(cross_protocol_methods()),
        benchmarks=" ".join(cross_protocol_benchmarks()),
    log:
        "logs/cross_protocol.log",
    resources:
        **job_resources("report"),
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "vcorr report cross-protocol {input} --methods {params.methods} --benchmarks {params.benchmarks}"
        " --out {output} > {log} 2>&1"


# A table of config/published.yaml: every row's result (propagated, scored) beside the published
# numbers; editing published.yaml rebuilds it.
rule table:
    input:
        results=table_results,
        published=str(REGISTRY_DIR / "published.yaml"),
    output:
        report("results/tables/{table}.csv", caption="../report/table.rst", category="Summary"),
    log:
        "logs/tables/{table}.log",
    resources:
        **job_resources("report"),
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "vcorr report table {wildcards.table} {input.results} --out {output} > {log} 2>&1"


# vcorr's predictions of a released model against the masks its authors released
# (published.yaml `masks`), frame by frame, and both J&F by vcorr's scorer.
rule agreement:
    input:
        unpack(agreement_inputs),
    output:
        report("results/{benchmark}/{method}.agreement.json", caption="../report/agreement.rst", category="Agreement"),
    params:
        root=lambda wildcards: data_root(wildcards.benchmark),
        masks=lambda wildcards: released_masks(wildcards.benchmark, wildcards.method)[1],
        code=lambda wildcards: agreement_code(),
    wildcard_constraints:
        benchmark=one_of(benchmarks_scored_by("davis")),
    log:
        "logs/agreement/{benchmark}/{method}.log",
    threads: job_resources("score")["cpus_per_task"]
    resources:
        **job_resources("score"),
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "vcorr report agreement --benchmark {wildcards.benchmark} --method {wildcards.method} --data-root {params.root}"
        " --predictions {input.predictions} --masks {params.masks} --jobs {threads} --out {output} > {log} 2>&1"


# --- the report page (config report.page): tables, score chart, training curves, overlays ----

rule score_chart:
    input:
        # With the cross-protocol table: a hatch per protocol for every method.
        "results/cross_protocol.csv" if config["report"]["cross_protocol"] else "results/summary.csv",
    output:
        "results/report/scores.png",
    log:
        "logs/report/scores.log",
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "vcorr report figures scores {input} --out {output} > {log} 2>&1"


rule loss_curves:
    input:
        [MODEL_FILE.format(model=model) for model in trained_models_read()],
    output:
        "results/report/losses.png",
    params:
        # metrics.csv lives in the work dir (not an output); the exported model is written after it.
        stages=lambda wildcards: " ".join(
            f"{model}={training_workdir(SimpleNamespace(model=model))}/metrics.csv"
            for model in trained_models_read()
        ),
    log:
        "logs/report/losses.log",
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "vcorr report figures losses {params.stages} --out {output} > {log} 2>&1"


rule overlay:
    input:
        unpack(benchmark_data),
        predictions="results/predictions/{benchmark}/{method}/all",
    output:
        "results/report/overlays/{benchmark}/{method}/{sequence}.png",
    params:
        root=lambda wildcards: data_root(wildcards.benchmark),
    log:
        "logs/report/overlays/{benchmark}/{method}/{sequence}.log",
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "vcorr report figures overlay --benchmark {wildcards.benchmark} --root {params.root}"
        " --sequence {wildcards.sequence} --pred {input.predictions}/{wildcards.sequence} --out {output} > {log} 2>&1"


rule report_page:
    input:
        summary="results/summary.csv",
        cross_protocol=["results/cross_protocol.csv"] if config["report"]["cross_protocol"] else [],
        published=[f"results/tables/{name}.csv" for name in config["report"]["tables"]],
        scores="results/report/scores.png",
        losses=["results/report/losses.png"] if trained_models_read() else [],
        overlays=overlay_files(),
    output:
        report("results/report.html", caption="../report/page.rst", category="Summary"),
    params:
        tables=lambda wildcards, input: " ".join(
            [f"--table Cross-protocol={path}" for path in input.cross_protocol]
            + [f"--table {shlex.quote(table_heading(path))}" for path in input.published]
        ),
        images=lambda wildcards, input: " ".join(
            f"--images {shlex.quote('='.join((heading, ','.join(files))))}"
            for heading, files in (
                ("Headline scores", [input.scores]),
                ("Training curves", list(input.losses)),
                ("Ground truth (top row) and prediction (bottom row)", list(input.overlays)),
            )
            if files
        ),
    log:
        "logs/report/page.log",
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "vcorr report page --table Summary={input.summary} {params.tables} {params.images} --title 'vcorr report'"
        " --out {output} > {log} 2>&1"
