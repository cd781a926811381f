# Released checkpoints: each file a method reads is an output here and an input of its
# propagation, so replacing one reruns exactly the evaluations that used it.


for _weights, _files in weights_in_use().items():

    rule:
        name:
            f"weights_{_weights}"
        input:
            download_files(_weights),
        output:
            [f"resources/data/{_weights}/{name}" for name in _files],
        log:
            f"logs/weights/{_weights}.log",
        localrule: True
        conda:
            "../../envs/vcorr.yaml"
        params:
            entry=_weights,
        shell:
            "vcorr data extract {params.entry} --downloads resources/downloads --dest resources/data" " > {log} 2>&1"
