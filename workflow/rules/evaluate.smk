# Per-case metrics against the dense labels (the only place test labels are read), then tables.


rule evaluate:
    input:
        predictions="results/predictions/{dataset}/{method}/fold{fold}",
        dataset="results/data/{dataset}/dataset.json",
    output:
        "results/metrics/{dataset}/{method}/fold{fold}.csv",
    log:
        "logs/evaluate/{dataset}/{method}/fold{fold}.log",
    params:
        tags=evaluate_tags,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cmfnet.yaml"
    shell:
        "cmfnet evaluate --pred {input.predictions} --dataset results/data/{wildcards.dataset} "
        "--out {output} {params.tags} > {log} 2>&1"


rule tables:
    input:
        metrics_files(),
    output:
        csv=report("results/tables/table1.csv", caption="../report/table1.rst", category="Tables"),
        md=report("results/tables/table1.md", caption="../report/table1.rst", category="Tables"),
    log:
        "logs/tables.log",
    params:
        order=",".join(all_method_ids()),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/cmfnet.yaml"
    shell:
        "cmfnet tables --metrics {input} --out results/tables --order {params.order} > {log} 2>&1"
