# Per-case metrics against the dense labels (the only place test labels are read), then tables.
# Every table and figure the config implies is a declared output of `tables`, so each one is a
# target and a deleted one is rebuilt; cmfnet/evaluation/tables.py is an input, so editing it rebuilds them.


rule evaluate:
    input:
        predictions="results/predictions/{dataset}/{method}/seed{seed}/fold{fold}",
        dataset="results/data/{dataset}/dataset.json",
    output:
        "results/metrics/{dataset}/{method}/seed{seed}/fold{fold}.csv",
    log:
        "logs/evaluate/{dataset}/{method}/seed{seed}/fold{fold}.log",
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
        tables=[reported_table(f) for f in table_outputs()],
        provenance="results/tables/provenance.json",
    log:
        "logs/tables.log",
    params:
        order=",".join(all_method_ids()),
        reference=lambda wildcards: config["reference"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/cmfnet.yaml"
    shell:
        "cmfnet tables --metrics {input.metrics} --out results/tables --order {params.order} "
        "--reference {params.reference} > {log} 2>&1"


# Learning curves and the convergence verdict (docs/protocol.md) from every model's train_log.csv,
# which lies beside its model.pt; like the tables, reading logs never retrains.
rule curves:
    input:
        models=trained_models,
    output:
        table=report(CURVE_OUTPUTS[0], caption="../report/tables.rst", category="Convergence"),
        markdown=CURVE_OUTPUTS[1],
        figure=report(CURVE_OUTPUTS[2], caption="../report/tables.rst", category="Convergence"),
    log:
        "logs/curves.log",
    params:
        logs=lambda wildcards, input: " ".join(str(Path(m).parent / "train_log.csv") for m in input.models),
        order=lambda wildcards: ",".join(dict.fromkeys(model_id(m) for m in all_method_ids())),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/cmfnet.yaml"
    shell:
        "cmfnet curves --logs {params.logs} --out-table results/tables/convergence "
        "--out-figure {output.figure} --order {params.order} > {log} 2>&1"


# The paper's qualitative figure (Fig. 3-5): the reference row's worst, median and best test case
# (cmfnet/evaluation/qualitative.py states the rule), every row's prediction on one slice.
rule qualitative:
    input:
        unpack(qualitative_inputs),
    output:
        report(QUALITATIVE, caption="../report/qualitative.rst", category="Figures"),
    log:
        "logs/qualitative.log",
    params:
        dataset=dataset_dir(),
        predictions=f"results/predictions/{DATASET}",
        order=",".join(table1_methods()),
        reference=lambda wildcards: qualitative_reference(),
        seed=SEEDS[0],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/cmfnet.yaml"
    shell:
        "cmfnet qualitative --dataset {params.dataset} --predictions {params.predictions} "
        "--metrics {input.metrics} --order {params.order} --reference {params.reference} "
        "--seed {params.seed} --out {output} > {log} 2>&1"
