# Helpers shared by the rules: config validation, method and fold expansion, CLI arguments, and
# what each job depends on (cmfnet/provenance.py explains the rerun and reuse rules).
import importlib.util
import json
from functools import cache
from pathlib import Path

import jsonschema
import yaml
from snakemake.utils import validate

from cmfnet.training.config import resolve_train_config
from cmfnet.errors import InputError
from cmfnet.data.dataset import Dataset
from cmfnet.training.cards import card_path_for_id, head_overrides, load_card, method_ids
from cmfnet.provenance import (digest, network_overrides, plugin_sources, row_hash, trained_as, training_settings,
                               workdir_relative)


def check_config(schema_file):
    """Refuse a bad config in one line that names the key (Snakemake's validate prints the whole
    schema); validate() below then fills in the defaults."""
    schema = yaml.safe_load(Path(schema_file).read_text())
    for key in ("folds", "seeds"):  # --config folds=[0,1] gives strings
        if isinstance(config.get(key), list):
            config[key] = [int(v) if isinstance(v, str) and v.isdigit() else v for v in config[key]]
    if isinstance(config.get("train"), dict) and "seed" in config["train"]:
        raise InputError("config.train.seed", "the training seeds are the top-level list `seeds:` "
                                              "(e.g. seeds: [0, 1, 2]); every seed trains every method and fold")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is None:
        return
    where = "config" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    if error.validator == "additionalProperties":
        unknown = ", ".join(repr(key) for key in sorted(set(error.instance) - set(error.schema["properties"])))
        raise InputError(where, f"unknown key {unknown} (known keys: {', '.join(error.schema['properties'])})")
    raise InputError(where, error.message)


check_config(Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
validate(config, "../schemas/config.schema.yaml")

DATASET = config["dataset"]["name"]
METHODS_DIR = Path(config["methods_dir"])
PROTOCOL = config["protocol_version"]
#: the preset's network: block, applied to every card after its own network (card_of, card_args)
NETWORK_OVERRIDES = network_overrides(config["network"])
wildcard_constraints:
    seed=r"\d+",
    fold=r"\d+",


#: every method x fold trains once per seed; tables average a case over its seeds
SEEDS = config["seeds"]


def train_block(seed):
    """The preset's train: block for one training seed (the seed is part of the model's settings)."""
    return {**config["train"], "seed": int(seed)}


def dataset_dir():
    """Every dataset lives at results/data/<name> (a link for source: path)."""
    return f"results/data/{DATASET}"


def synth_args():
    synth = config["dataset"]["synth"]
    args = f"--kind {synth['kind']} --cases {synth['cases']} --seed {synth['seed']}"
    args += f" --folds {synth['folds']}"
    if synth.get("shape"):
        args += " --shape " + " ".join(str(s) for s in synth["shape"])
    return args


def import_args():
    spec = config["dataset"]["import"]
    return " ".join([spec["importer"], *(str(a) for a in spec.get("args", []))])


@cache
def table1_methods():
    """The configured rows without the ablations: methods, then extra_methods (a user file's own)."""
    return list(dict.fromkeys(config["methods"] + config["extra_methods"]))


def all_method_ids():
    """The rows, in table order: methods, extra_methods (a user file's own), then the ablations."""
    ids = list(table1_methods())  # a copy: += on the cached list would add the ablations to Table I
    for stem in config["ablations"]:
        ids += method_ids(METHODS_DIR / f"{stem}.yaml")
    return ids


@cache
def card_of(method):
    path, variant, head = card_path_for_id(METHODS_DIR, method)
    return load_card(path, NETWORK_OVERRIDES, variant=variant, head=head)


@cache
def model_id(method):
    """The model folder a row reads: heads of a variant share one, and a variant whose settings
    equal its base card's reads the base card's model (identical settings never train twice)."""
    return trained_as(METHODS_DIR, method, config["train"], PROTOCOL, NETWORK_OVERRIDES)


def model_of(wildcards):
    return (f"results/models/{wildcards.dataset}/{model_id(wildcards.method)}/seed{wildcards.seed}/"
            f"fold{wildcards.fold}/model.pt")


def predict_overrides(wildcards):
    """--set arguments that select a head of the trained model (empty for ordinary rows)."""
    path, _, head = card_path_for_id(METHODS_DIR, wildcards.method)
    if head is None:
        return ""
    return " ".join(f"--set '{key}={value}'" for key, value in head_overrides(path)[head][1].items())


def dataset_folds():
    """(number of folds, where that number comes from), or (None, why not) before an import."""
    source = config["dataset"]["source"]
    if source == "synth":
        return config["dataset"]["synth"]["folds"], "dataset.synth.folds"
    folder = Path(config["dataset"]["path"]) if source == "path" else Path(dataset_dir())
    if source == "path" and not (folder / "dataset.json").is_file():
        raise InputError("config.dataset.path", f"{folder} holds no dataset.json; give the folder that "
                                                "`cmfnet import` wrote")
    if not (folder / "dataset.json").is_file():
        return None, f"{folder / 'dataset.json'} does not exist yet"
    return len(Dataset(folder).splits), str(folder / "dataset.json")


@cache
def folds():
    """The configured folds, checked against the dataset's splits before any job runs."""
    chosen = config["folds"]
    count, source = dataset_folds()
    if chosen == "all":
        if count is None:
            raise InputError("config.folds", f"'all' needs the dataset's splits, but {source}; "
                                             "list the folds (e.g. folds: [0, 1]) or run the import first")
        return list(range(count))
    outside = [fold for fold in chosen if count is not None and fold >= count]
    if outside:
        raise InputError("config.folds", f"fold {outside[0]} does not exist: {source} gives {count} "
                                         f"folds, 0 to {count - 1}")
    return list(chosen)


def scribble_flag(variant):
    return f"{dataset_dir()}/scribblesTr/{variant}/coverage.json"


def train_inputs(wildcards):
    """The data, and the plugin's own code: editing baselines/<m>.py retrains method m only."""
    card = card_of(wildcards.method)
    inputs = {"dataset": f"{dataset_dir()}/dataset.json",
              "plugin": [workdir_relative(file) for file in plugin_sources(card)]}
    if card.supervision == "scribble" and card.scribble_variant != "given":
        inputs["scribbles"] = scribble_flag(card.scribble_variant)
    return inputs


def card_args(wildcards):
    card = card_of(wildcards.method)
    args = f"--card {card.path}" + (f" --variant {card.variant}" if card.variant else "")
    return " ".join([args, *(f"--set '{override}'" for override in NETWORK_OVERRIDES)])


def train_config_json(wildcards):
    return json.dumps(train_block(wildcards.seed), sort_keys=True)


def training_hash(wildcards):
    """The resolved card (base card included), training block and protocol version, as a hash:
    a param of train, so a change to any of them retrains, and a comment in a card does not."""
    return digest(training_settings(card_of(wildcards.method), train_block(wildcards.seed), PROTOCOL))


def evaluate_tags(wildcards):
    card = card_of(wildcards.method)
    train = train_block(wildcards.seed)
    provenance = row_hash(card, train, PROTOCOL, dataset=config["dataset"], fold=wildcards.fold,
                          scribble_seed=config["scribbles"]["seed"], predict=config["predict"])
    tags = {"dataset": DATASET, "method": wildcards.method, "method_name": card.name,
            "table": table_of(wildcards.method), "data": "masks" if card.supervision == "mask" else "scribbles",
            "fold": wildcards.fold, "seed": resolve_train_config(card, train).seed,
            "config": provenance}
    return " ".join(f"--tag '{k}={v}'" for k, v in tags.items())


def job_gpus(wildcards):
    """GPUs a train or predict job asks the scheduler for: config `gpus`, else 1 when the config
    names a CUDA device. Decided by the config, never by the submitting host's hardware (under a
    cluster executor the host that plans the jobs is not the one that runs them)."""
    return config.get("gpus", 1 if config["device"].startswith("cuda") else 0)


def metrics_files(wildcards=None, methods=None):
    """Every seed's and fold's metrics of the given rows (default: every configured row)."""
    return expand("results/metrics/{dataset}/{method}/seed{seed}/fold{fold}.csv", dataset=DATASET,
                  method=methods or all_method_ids(), seed=SEEDS, fold=folds())


def table_of(method):
    return card_of(method).table or "table1"


def table_names():
    """Every table the configured rows fill (table1, and each table a card or variant file names)."""
    return sorted({table_of(m) for m in all_method_ids()})


def table_outputs():
    """Every file `cmfnet tables` writes for this config: a declared output and a target each."""
    tables = table_names()
    files = expand("results/tables/{table}.{ext}", table=tables, ext=["csv", "md", "tex"])
    return files + expand("results/figures/{table}.png", table=[t for t in tables if t.startswith("fig")])


def tables_code():
    """cmfnet/evaluation/tables.py is an input of the tables: editing it rebuilds them and nothing else."""
    return workdir_relative(Path(importlib.util.find_spec("cmfnet.evaluation.tables").origin))


def trained_models(wildcards=None):
    """Every model the configured rows read, once each (variants with equal settings share one)."""
    ids = list(dict.fromkeys(model_id(method) for method in all_method_ids()))
    return expand("results/models/{dataset}/{model}/seed{seed}/fold{fold}/model.pt", dataset=DATASET,
                  model=ids, seed=SEEDS, fold=folds())


CURVE_OUTPUTS = ["results/tables/convergence.csv", "results/tables/convergence.md", "results/figures/curves.png"]


QUALITATIVE = "results/figures/qualitative.png"


def qualitative_reference():
    """CmFNet's worst, median and best cases are shown, or the first row's when CmFNet is not run."""
    return "cmfnet" if "cmfnet" in table1_methods() else table1_methods()[0]


def qualitative_inputs(wildcards=None):
    """The rows' metrics (all seeds choose the cases) and the first seed's predictions (drawn)."""
    return {"metrics": metrics_files(methods=table1_methods()),
            "predictions": expand("results/predictions/{dataset}/{method}/seed{seed}/fold{fold}", dataset=DATASET,
                                  method=table1_methods(), seed=SEEDS[0], fold=folds()),
            "dataset": f"{dataset_dir()}/dataset.json"}


def final_outputs():
    return table_outputs() + ["results/tables/provenance.json"] + CURVE_OUTPUTS + [QUALITATIVE]
