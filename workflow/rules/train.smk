# Training: one job per model of models.yaml (`vcorr train`), exporting results/models/<model>.pth.
#
# The work dir (checkpoints, resolved config, metrics.csv, TensorBoard) is results/train/<model>/
# <settings digest>/ and not an output: Snakemake never deletes it, so a failed, timed-out or
# preempted job (SIGTERM / SIGUSR1: a checkpoint, a non-zero exit) resumes when it is rerun
# (`retries:` of the Slurm profile resubmits it once). The export is written at the very end;
# the untrained initialisation (results/models/init/<model>.pth, the `<method>_init` baselines)
# when the job starts. With validation (`eval_every` in the model's settings) the validation data
# are inputs, and the scores are in metrics.csv beside the loss.


rule train:
    input:
        unpack(training_inputs),
    output:
        model=MODEL_FILE,
        init=INIT_FILE,
    log:
        "logs/train/{model}.log",
    benchmark:
        "logs/benchmarks/train/{model}.tsv"
    conda:
        "../../envs/vcorr.yaml"
    threads: config["resources"]["train"]["cpus_per_task"]
    resources:
        **training_resources(),
    params:
        # The resolved training config: a changed hyper-parameter reruns this model and what
        # uses it, nothing else.
        settings=lambda wildcards: training_settings(wildcards.model),
        method=lambda wildcards: MODELS[wildcards.model]["method"],
        workdir=training_workdir,
        overrides=training_arguments,
        device=config["training"]["device"],
        launcher=training_launcher,
    shell:
        "{params.launcher} vcorr train --method {params.method} --config {input.config} --data {input.index}"
        " --workdir {params.workdir} --out {output.model} --init-out {output.init} --device {params.device} {params.overrides} >> {log} 2>&1"
