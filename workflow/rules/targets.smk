# Targets that name an unknown benchmark or method: refused when the DAG is built (so by
# `snakemake -n`) with a line listing what the registries hold, instead of "No rule to produce".
# Included last, so the folders other rules write under results/ are never claimed here. A known
# pair the method has no settings for is refused by method_settings (common.smk) in the rules.


rule unknown_target:
    input:
        refuse_unknown_target,
    output:
        "results/{target}",
    log:
        "logs/unknown_target/{target}.log",
    wildcard_constraints:
        target=unknown_target_regex(),
    localrule: True
    conda:
        "../../envs/vcorr.yaml"
    shell:
        "false  # never runs: its input function refuses the target"
