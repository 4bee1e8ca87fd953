# Per-case metrics against the dense labels (the only place test labels are read), then tables.
# Every table and figure the config implies is a declared output of `tables`, so each one is a
# target and a deleted one is rebuilt; cmfnet/evaluation/tables.py is an input, so editing it rebuilds them.


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
        "--fold {wildcards.fold} --out {output} {params.tags} > {log} 2>&1"


rule tables:
    input:
        metrics=metrics_files(),
        code=tables_code(),
    output:
        tables=[report(f, caption="../report/tables.rst", category="Tables") for f in table_outputs()],
        provenance="results/tables/provenance.json",
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
        "cmfnet tables --metrics {input.metrics} --out results/tables --order {params.order} > {log} 2>&1"
