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
            labels=result_labels,
        ),
    log:
        "logs/result/{benchmark}/{method}.log",
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    resources:
        **job_resources("report"),
    params:
        overrides=lambda wildcards: parameter_overrides(wildcards.benchmark),
        # A change of the code that trains a model this method reads re-flags the result (it
        # names models trained by other code; retraining stays `--forcerun train`).
        training_code=lambda wildcards: models_training_code(wildcards.method),
    shell:
        "vcorr report result --benchmark {wildcards.benchmark} --method {wildcards.method}"
        " --evaluation {input.evaluation} --weights {input.weights}"
        " --propagate-timings {input.propagate_timings} --evaluate-timings {input.evaluate_timing}"
        " {params.overrides} --out {output} > {log} 2>&1"


rule summary:
    input:
        [f"results/{benchmark}/{method}.json" for benchmark, method in requested_pairs()],
    output:
        report("results/summary.csv", caption="../report/summary.rst", category="Summary", labels={"table": "summary"}),
    log:
        "logs/summary.log",
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    resources:
        **job_resources("report"),
    shell:
        "vcorr report summary {input} --out {output} > {log} 2>&1"


# Every requested method under both protocols (config/protocols.yaml): its own protocol's cell
# is its result above, the other's that of <method>@<protocol>.
rule cross_protocol:
    input:
        sorted(
            {
                f"results/{cell.benchmark}/{cell.evaluated_as}.json"
                for cell in cross_protocol_cells()
                if cell.evaluated_as
            }
        ),
    output:
        report(
            "results/cross_protocol.csv",
            caption="../report/cross_protocol.rst",
            category="Summary",
            labels={"table": "cross-protocol"},
        ),
    log:
        "logs/cross_protocol.log",
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    resources:
        **job_resources("report"),
    params:
        methods=" ".join(cross_protocol_methods()),
        benchmarks=" ".join(cross_protocol_benchmarks()),
    shell:
        "vcorr report cross-protocol {input} --methods {params.methods} --benchmarks {params.benchmarks}"
        " --out {output} > {log} 2>&1"


# A table of config/published.yaml: every row's result (propagated, scored) beside the published
# numbers; editing published.yaml rebuilds it.
rule table:
    input:
        results=table_results,
        published=lambda wildcards: str(registry_file("published.yaml")),
    output:
        report("results/tables/{table}.csv", caption="../report/table.rst", category="Summary"),
    log:
        "logs/tables/{table}.log",
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    resources:
        **job_resources("report"),
    shell:
        "vcorr report table {wildcards.table} {input.results} --out {output} > {log} 2>&1"


# vcorr's predictions of a released model against the masks its authors released
# (published.yaml `masks`), frame by frame, and both J&F by vcorr's scorer.
rule agreement:
    input:
        unpack(agreement_inputs),
    output:
        report("results/{benchmark}/{method}.agreement.json", caption="../report/agreement.rst", category="Agreement"),
    log:
        "logs/agreement/{benchmark}/{method}.log",
    wildcard_constraints:
        benchmark=one_of(benchmarks_scored_by("davis")),
    conda:
        "../../envs/vcorr.yaml"
    threads: job_resources("score")["cpus_per_task"]
    resources:
        **job_resources("score"),
    params:
        root=lambda wildcards: data_root(wildcards.benchmark),
        masks=lambda wildcards: released_masks(wildcards.benchmark, wildcards.method)[1],
        code=lambda wildcards: agreement_code(),
    shell:
        "vcorr report agreement --benchmark {wildcards.benchmark} --method {wildcards.method} --data-root {params.root}"
        " --predictions {input.predictions} --masks {params.masks} --jobs {threads} --out {output} > {log} 2>&1"


# --- the report page (config report.page): tables, score chart, training curves, overlays ----


rule score_chart:
    input:
        # With the cross-protocol table: a hatch per protocol for every method.
        "results/cross_protocol.csv" if config["report"]["cross_protocol"] else "results/summary.csv",
    output:
        report(
            "results/report/scores.png", caption="../report/scores.rst", category="Summary", labels={"table": "chart"}
        ),
    log:
        "logs/report/scores.log",
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "vcorr report figures scores {input} --out {output} > {log} 2>&1"


# One figure per trained model: its metrics.csv (in the work dir, not an output; the exported
# model is written after it), loss terms and every other logged term against the step.
rule loss_curves:
    input:
        MODEL_FILE,
    output:
        report(
            TRAINING_CURVES,
            caption="../report/training.rst",
            category="Training",
            labels=lambda wildcards: {"model": wildcards.model, "training": MODELS[wildcards.model]["method"]},
        ),
    log:
        "logs/report/training/{model}.log",
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    params:
        metrics=lambda wildcards: f"{training_workdir(wildcards)}/metrics.csv",
    shell:
        "vcorr report figures losses {wildcards.model}={params.metrics} --out {output} > {log} 2>&1"


rule overlay:
    input:
        unpack(benchmark_data),
        predictions="results/predictions/{benchmark}/{method}/all",
    output:
        report(
            OVERLAY_FILE,
            caption="../report/overlay.rst",
            category="Overlays",
            subcategory="{benchmark}",
            labels=lambda wildcards: {**result_labels(wildcards), "sequence": wildcards.sequence},
        ),
    log:
        "logs/report/overlays/{benchmark}/{method}/{sequence}.log",
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    params:
        root=lambda wildcards: data_root(wildcards.benchmark),
    shell:
        "vcorr report figures overlay --benchmark {wildcards.benchmark} --root {params.root}"
        " --sequence {wildcards.sequence} --pred {input.predictions}/{wildcards.sequence} --out {output} > {log} 2>&1"


rule report_page:
    input:
        summary="results/summary.csv",
        cross_protocol=["results/cross_protocol.csv"] if config["report"]["cross_protocol"] else [],
        published=[f"results/tables/{name}.csv" for name in config["report"]["tables"]],
        scores="results/report/scores.png",
        losses=[TRAINING_CURVES.format(model=model) for model in trained_models_read()],
        overlays=overlay_files(),
    output:
        report("results/report.html", caption="../report/page.rst", category="Summary", labels={"table": "page"}),
    log:
        "logs/report/page.log",
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
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
        # What the page says beside the tables and figures (vcorr.report.captions).
        words=page_words,
    shell:
        "vcorr report page --table Summary={input.summary} {params.tables} {params.images} {params.words}"
        " --title 'vcorr report'"
        " --out {output} > {log} 2>&1"
