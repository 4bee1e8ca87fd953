# Helpers shared by the rules: config validation, method and fold expansion, CLI arguments.
import hashlib
import json
from pathlib import Path

import torch
from snakemake.utils import validate

from cmfnet.io import Dataset
from cmfnet.method import card_path_for_id, head_overrides, load_card, method_ids, training_id

validate(config, "../schemas/config.schema.yaml")

DATASET = config["dataset"]["name"]
METHODS_DIR = Path(config.get("methods_dir", "methods"))


def dataset_dir():
    """Every dataset lives at results/data/<name> (a link for source: path)."""
    return f"results/data/{DATASET}"


def synth_args():
    synth = config["dataset"]["synth"]
    args = f"--kind {synth['kind']} --cases {synth['cases']} --seed {synth.get('seed', 0)}"
    args += f" --folds {synth.get('folds', 5)}"
    if synth.get("shape"):
        args += " --shape " + " ".join(str(s) for s in synth["shape"])
    return args


def import_args():
    spec = config["dataset"]["import"]
    return " ".join([spec["importer"], *(str(a) for a in spec.get("args", []))])


def all_method_ids():
    ids = list(config["methods"])
    for stem in config.get("ablations", []):
        ids += method_ids(METHODS_DIR / f"{stem}.yaml")
    return ids


def card_of(method):
    path, variant, head = card_path_for_id(METHODS_DIR, method)
    return load_card(path, variant=variant, head=head)


def model_of(wildcards):
    """The trained model a row predicts with: every head of a variant reads the same one."""
    return f"results/models/{wildcards.dataset}/{training_id(wildcards.method)}/fold{wildcards.fold}/model.pt"


def predict_overrides(wildcards):
    """--set arguments that select a head of the trained model (empty for ordinary rows)."""
    path, _, head = card_path_for_id(METHODS_DIR, wildcards.method)
    if head is None:
        return ""
    return " ".join(f"--set '{key}={value}'" for key, value in head_overrides(path)[head][1].items())


def folds():
    """Fold indices from config (all: every fold the dataset's splits define, known after synth)."""
    chosen = config.get("folds", "all")
    if chosen != "all":
        return list(chosen)
    if config["dataset"]["source"] == "synth":
        return list(range(config["dataset"]["synth"].get("folds", 5)))
    if config["dataset"]["source"] == "path":
        return list(range(len(Dataset(config["dataset"]["path"]).splits)))
    raise ValueError("folds: all needs the dataset first; with source: import list the folds, e.g. folds: [0, 1]")


def scribble_flag(variant):
    return f"{dataset_dir()}/scribblesTr/{variant}/coverage.json"


def scribble_variants():
    """Variants the configured methods train on; 'given' ships with the data and is never generated."""
    variants = {card_of(m).scribble_variant for m in all_method_ids() if card_of(m).supervision == "scribble"}
    return sorted(variants - {"given"})


def train_inputs(wildcards):
    card = card_of(wildcards.method)
    inputs = {"dataset": f"{dataset_dir()}/dataset.json", "card": str(card.path)}
    if card.supervision == "scribble" and card.scribble_variant != "given":
        inputs["scribbles"] = scribble_flag(card.scribble_variant)
    return inputs


def card_args(wildcards):
    card = card_of(wildcards.method)
    return f"--card {card.path}" + (f" --variant {card.variant}" if card.variant else "")


def train_config_json(wildcards):
    return json.dumps(config["train"], sort_keys=True)


def config_hash():
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def evaluate_tags(wildcards):
    card = card_of(wildcards.method)
    tags = {"dataset": DATASET, "method": wildcards.method, "method_name": card.name,
            "table": card.table or "table1", "data": "masks" if card.supervision == "mask" else "scribbles",
            "fold": wildcards.fold, "seed": config["train"].get("seed", 0), "config": config_hash()}
    return " ".join(f"--tag '{k}={v}'" for k, v in tags.items())


def train_gpus(wildcards):
    return 1 if torch.cuda.is_available() else 0


def metrics_files(wildcards=None):
    return expand("results/metrics/{dataset}/{method}/fold{fold}.csv", dataset=DATASET,
                  method=all_method_ids(), fold=folds())


def final_outputs():
    return ["results/tables/table1.csv", "results/tables/table1.md"]
