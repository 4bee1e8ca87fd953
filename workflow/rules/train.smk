# Train each method on each fold, then segment that fold's test cases.
# Only model.pt is a declared output: the resume checkpoint last.pt must survive a failed job.
# A training reruns when its plugin's source (an input) or its resolved card, training block or
# protocol version (the `settings` param) changes; never for a comment, a table or a README edit.


rule train:
    wildcard_constraints:
        method="[^@/]+",
    input:
        unpack(train_inputs),
    output:
        "results/models/{dataset}/{method}/seed{seed}/fold{fold}/model.pt",
    log:
        "logs/train/{dataset}/{method}/seed{seed}/fold{fold}.log",
    params:
        card=card_args,
        train=train_config_json,
        settings=training_hash,
        device=config["device"],
    # one thread per training: on CPU, parallel jobs use cores better than intra-op threads on
    # small 3D patches (raise it with --set-threads train=N)
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=job_gpus,
    conda:
        "../envs/cmfnet.yaml"
    shell:
        "cmfnet train {params.card} --dataset results/data/{wildcards.dataset} --fold {wildcards.fold} "
        "--out results/models/{wildcards.dataset}/{wildcards.method}/seed{wildcards.seed}/fold{wildcards.fold} "
        "--train-config '{params.train}' --device {params.device} --threads {threads} > {log} 2>&1"


rule predict:
    input:
        model=model_of,
        dataset="results/data/{dataset}/dataset.json",
    output:
        directory("results/predictions/{dataset}/{method}/seed{seed}/fold{fold}"),
    log:
        "logs/predict/{dataset}/{method}/seed{seed}/fold{fold}.log",
    params:
        overlap=config["predict"]["overlap"],
        device=config["device"],
        head=predict_overrides,
    # one thread, as for training: two jobs side by side on 2 cores each with torch's default
    # thread count spin-wait on each other (measured 15-26 s per case instead of 2-3 s)
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=job_gpus,
    conda:
        "../envs/cmfnet.yaml"
    shell:
        "cmfnet predict --model $(dirname {input.model}) --dataset results/data/{wildcards.dataset} "
        "--out {output} --overlap {params.overlap} --device {params.device} --threads {threads} {params.head} > {log} 2>&1"
