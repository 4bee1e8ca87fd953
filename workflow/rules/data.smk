# The dataset (synthetic phantoms, an importer, or a folder the user already has) and the
# scribbles of its training cases. Every dataset ends up at results/data/{dataset}.

DATA_SOURCE = config["dataset"]["source"]

if DATA_SOURCE == "synth":

    rule synth:
        output:
            "results/data/{dataset}/dataset.json",
        log:
            "logs/data/{dataset}.log",
        params:
            args=synth_args(),
            # the phantoms and their normalisation are shared code: a protocol bump remakes them
            protocol=PROTOCOL,
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        conda:
            "../envs/cmfnet.yaml"
        shell:
            "cmfnet synth {params.args} --out results/data/{wildcards.dataset} > {log} 2>&1"

elif DATA_SOURCE == "import":

    rule import_dataset:
        output:
            "results/data/{dataset}/dataset.json",
        log:
            "logs/data/{dataset}.log",
        params:
            args=import_args(),
            # importers and their normalisation are shared code: a protocol bump re-imports
            protocol=PROTOCOL,
        threads: 1
        resources:
            mem_mb=8000,
            runtime=120,
        conda:
            "../envs/cmfnet.yaml"
        shell:
            "cmfnet import {params.args} --out results/data/{wildcards.dataset} > {log} 2>&1"

else:

    rule link_dataset:
        output:
            "results/data/{dataset}/dataset.json",
        log:
            "logs/data/{dataset}.log",
        params:
            source=config["dataset"].get("path", ""),
        threads: 1
        resources:
            mem_mb=1000,
            runtime=5,
        conda:
            "../envs/cmfnet.yaml"
        shell:
            "(cmfnet validate {params.source} && rmdir results/data/{wildcards.dataset} "
            "&& ln -s $(realpath {params.source}) results/data/{wildcards.dataset}) > {log} 2>&1"


rule scribble:
    input:
        "results/data/{dataset}/dataset.json",
    output:
        "results/data/{dataset}/scribblesTr/{variant}/coverage.json",
    log:
        "logs/scribble/{dataset}/{variant}.log",
    params:
        seed=config["scribbles"]["seed"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cmfnet.yaml"
    shell:
        "cmfnet scribble --dataset results/data/{wildcards.dataset} --variant {wildcards.variant} "
        "--seed {params.seed} > {log} 2>&1"
