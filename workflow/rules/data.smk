# Datasets: download (or accept archives placed by hand), extract, index.
#
# Downloads and indexing run on the submitting machine (localrule): cluster nodes often have no
# internet, and both are light. Extraction of big archives is a job of its own.


# One fetch rule per registry entry: an entry's output files are known only from the registry,
# and one job must fetch all of an entry's files (never two jobs writing the same folder). A file
# whose sha256 the registry gives is also checked by Snakemake (ensure): a mismatch fails the job
# and removes the file, and `retries` fetches it again (a transfer vcorr's own resume let through).
for _entry in DATASETS:
    if not download_files(_entry):
        continue

    rule:
        name:
            f"fetch_{_entry}"
        output:
            verified_downloads(_entry),
        log:
            f"logs/fetch/{_entry}.log",
        retries: FETCH_RETRIES
        localrule: True
        conda:
            "../../envs/vcorr.yaml"
        params:
            entry=_entry,
        shell:
            "vcorr data fetch {params.entry} --dest resources/downloads > {log} 2>&1"


rule extract:
    input:
        lambda wildcards: download_files(wildcards.dataset),
    output:
        directory("resources/data/{dataset}"),
    log:
        "logs/extract/{dataset}.log",
    benchmark:
        "logs/benchmarks/extract/{dataset}.tsv"
    conda:
        "../../envs/vcorr.yaml"
    threads: job_resources("extract")["cpus_per_task"]
    resources:
        **job_resources("extract"),
    params:
        # A built set's settings (datasets.yaml `build`): changing one rebuilds it.
        build=lambda wildcards: json.dumps(DATASETS[wildcards.dataset].get("build", {}), sort_keys=True),
    shell:
        "vcorr data extract {wildcards.dataset} --downloads resources/downloads --dest resources/data" " > {log} 2>&1"


rule index:
    input:
        "resources/data/{dataset}",
    output:
        "resources/index/{dataset}.csv",
    log:
        "logs/index/{dataset}.log",
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "vcorr data index {wildcards.dataset} --data resources/data --out {output} > {log} 2>&1"
