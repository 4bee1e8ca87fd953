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
from cmfnet.data.phantoms import kind_spec
from cmfnet.training.cards import card_path_for_id, head_overrides, load_card, method_ids
from cmfnet.provenance import (digest, network_overrides, plugin_sources, row_hash, trained_as, training_settings,
                               workdir_relative)


def _number(value: object, kind: type) -> object:
    """A number given as a string on the command line, as `kind`; anything else as it is (the
    schema then names what is wrong)."""
    try:
        return kind(value) if isinstance(value, str) else value
    except ValueError:
        return value


def check_config(schema_file):
    """Refuse a bad config in one line that names the key (Snakemake's validate prints the whole
    schema); validate() below then fills in the defaults."""
    schema = yaml.safe_load(Path(schema_file).read_text())
    for key, kind in (("folds", int), ("seeds", int), ("labelled_fractions", float)):
        if isinstance(config.get(key), list):  # --config folds=[0,1] gives strings
            config[key] = [_number(v, kind) for v in config[key]]
    if isinstance(config.get("train"), dict) and "seed" in config["train"]:
        raise InputError("config.train.seed", "the training seeds are the top-level list `seeds:` "
                                              "(e.g. seeds: [0, 1, 2]); every seed trains every method and fold")
    if isinstance(config.get("train"), dict) and "labelled_fraction" in config["train"]:
        raise InputError("config.train.labelled_fraction", "the labelled fractions are the top-level list "
                                                           "`labelled_fractions:` (e.g. [0.1, 0.2]); every "
                                                           "semi-supervised row trains once per fraction")
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
#: the table the configured methods fill: Table I on NPC data, Table II on WORD data
MAIN_TABLE = config["main_table"]

#: a semi-supervised row's id is its card's id, this mark and its labelled fraction
#: (semi_meanteacher+0.1), so the rows, models and metrics of two fractions never share a path;
#: the schema's pattern for method ids keeps "+" out of card ids
FRACTION_MARK = "+"


def semi_row(card_id: str, fraction: float) -> str:
    return f"{card_id}{FRACTION_MARK}{fraction:g}"


def split_row(method: str) -> tuple[str, float | None]:
    """(card id, labelled fraction) of a row id; the fraction is None outside the semi rows."""
    card_id, mark, fraction = method.partition(FRACTION_MARK)
    return card_id, (float(fraction) if mark else None)


def percent(fraction: float) -> str:
    """0.1 -> "10": how a fraction is named in tables (semi_10) and in the Data column."""
    return f"{100 * fraction:g}"


def row_train(method: str) -> dict:
    """The preset's train: block as a row trains with it: a semi row adds its labelled fraction
    (every other row gets the block unchanged, so its models keep their settings and paths)."""
    fraction = split_row(method)[1]
    return config["train"] if fraction is None else {**config["train"], "labelled_fraction": fraction}


def train_block(method: str, seed: int | str) -> dict:
    """The train: block of one row and training seed (the seed is part of the model's settings)."""
    return {**row_train(method), "seed": int(seed)}


def dataset_dir():
    """Every dataset lives at results/data/<name> (a link for source: path)."""
    return f"results/data/{DATASET}"


def synth_has_fixed_split():
    """Whether the phantom has one train/val/test split (word, as WORD) rather than
    dataset.synth.folds cross-validation folds (npc)."""
    return kind_spec(config["dataset"]["synth"]["kind"]).fixed_split


def synth_args():
    synth = config["dataset"]["synth"]
    args = f"--kind {synth['kind']} --cases {synth['cases']} --seed {synth['seed']}"
    if not synth_has_fixed_split():
        args += f" --folds {synth['folds']}"
    if synth.get("shape"):
        args += " --shape " + " ".join(str(s) for s in synth["shape"])
    return args


def import_args():
    spec = config["dataset"]["import"]
    return " ".join([spec["importer"], *(str(a) for a in spec.get("args", []))])


def with_fractions(card_ids: list[str]) -> list[str]:
    """The rows of these card ids: a semi-supervised card gives one row per labelled fraction."""
    rows = []
    for card_id in card_ids:
        if card_of(card_id).supervision == "semi":
            rows += [semi_row(card_id, fraction) for fraction in config["labelled_fractions"]]
        else:
            rows.append(card_id)
    return rows


@cache
def table1_methods():
    """The configured rows without the ablations: methods, then extra_methods (a user file's own)."""
    return with_fractions(dict.fromkeys(config["methods"] + config["extra_methods"]))


def all_method_ids():
    """The rows, in table order: methods, extra_methods (a user file's own), then the ablations."""
    ids = list(table1_methods())  # a copy: += on the cached list would add the ablations to Table I
    for stem in config["ablations"]:
        ids += with_fractions(method_ids(METHODS_DIR / f"{stem}.yaml"))
    return ids


@cache
def card_of(method):
    path, variant, head = card_path_for_id(METHODS_DIR, split_row(method)[0])
    return load_card(path, NETWORK_OVERRIDES, variant=variant, head=head)


@cache
def model_id(method):
    """The model folder a row reads: heads of a variant share one, and a variant whose settings
    equal its base card's reads the base card's model (identical settings never train twice); a
    semi row's folder keeps its fraction mark."""
    card_id, fraction = split_row(method)
    model = trained_as(METHODS_DIR, card_id, row_train(method), PROTOCOL, NETWORK_OVERRIDES)
    return model if fraction is None else semi_row(model, fraction)


def model_of(wildcards):
    return (f"results/models/{wildcards.dataset}/{model_id(wildcards.method)}/seed{wildcards.seed}/"
            f"fold{wildcards.fold}/model.pt")


def predict_overrides(wildcards):
    """--set arguments that select a head of the trained model (empty for ordinary rows)."""
    path, _, head = card_path_for_id(METHODS_DIR, split_row(wildcards.method)[0])
    if head is None:
        return ""
    return " ".join(f"--set '{key}={value}'" for key, value in head_overrides(path)[head][1].items())


def dataset_folds():
    """(number of folds, where that number comes from), or (None, why not) before an import."""
    source = config["dataset"]["source"]
    if source == "synth":
        if synth_has_fixed_split():
            return 1, f"the {config['dataset']['synth']['kind']} phantom's one fixed split"
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
    """The data, and the plugin's own code: editing baselines/<m>.py retrains method m only.
    Mask and semi rows read the dataset's dense labels (a semi row those of its labelled cases
    only, chosen by the engine), so only scribble rows wait for scribbles."""
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
    return json.dumps(train_block(wildcards.method, wildcards.seed), sort_keys=True)


def training_hash(wildcards):
    """The resolved card (base card included), training block and protocol version, as a hash:
    a param of train, so a change to any of them retrains, and a comment in a card does not."""
    return digest(training_settings(card_of(wildcards.method), train_block(wildcards.method, wildcards.seed),
                                    PROTOCOL))


def evaluate_tags(wildcards):
    card = card_of(wildcards.method)
    train = train_block(wildcards.method, wildcards.seed)
    provenance = row_hash(card, train, PROTOCOL, dataset=config["dataset"], fold=wildcards.fold,
                          scribble_seed=config["scribbles"]["seed"], predict=config["predict"])
    tags = {"dataset": DATASET, "method": wildcards.method, "method_name": card.name,
            "table": ";".join(tables_of(wildcards.method)), "data": data_of(wildcards.method),
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


def data_of(method: str) -> str:
    """What a row learns from, for the tables' Data column."""
    fraction = split_row(method)[1]
    if fraction is not None:
        return f"{percent(fraction)} % labelled"
    return "masks" if card_of(method).supervision == "mask" else "scribbles"


def tables_of(method: str) -> list[str]:
    """The tables a row fills: its card's (the config's main_table by default); a semi row its
    fraction's, semi_<percent> (<card table>_<percent> for a card that names one); and a main-table
    row trained on masks also every semi table of the main table's semi rows, as their fully
    supervised upper bound."""
    card = card_of(method)
    fraction = split_row(method)[1]
    if fraction is not None:
        return [f"{card.table or 'semi'}_{percent(fraction)}"]
    if card.table is None and card.supervision == "mask" and method in table1_methods():
        semi = dict.fromkeys(tables_of(m)[0] for m in table1_methods() if split_row(m)[1] is not None)
        return [MAIN_TABLE, *semi]
    return [card.table or MAIN_TABLE]


def table_names():
    """Every table the configured rows fill (main_table, and each table a card or variant file names)."""
    return sorted({table for m in all_method_ids() for table in tables_of(m)})


def table_outputs():
    """Every file `cmfnet tables` writes for this config: a declared output and a target each."""
    tables = table_names()
    files = expand("results/tables/{table}.{ext}", table=tables, ext=["csv", "md", "tex", "html"])
    return files + expand("results/figures/{table}.png", table=[t for t in tables if t.startswith("fig")])


def reported_table(path):
    """A table output as the report lists it: shown (HTML page, PNG figure) or offered as a
    download (CSV, Markdown, LaTeX), labelled by table and format."""
    path = Path(path)
    return report(str(path), caption="../report/tables.rst", category="Figures" if path.suffix == ".png" else "Tables",
                  subcategory=path.stem, labels={"table": path.stem, "format": path.suffix.lstrip(".")})


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
    # the qualitative figure draws Table I's rows; a preset of ablation files alone has none
    figure = [QUALITATIVE] if table1_methods() else []
    return table_outputs() + ["results/tables/provenance.json"] + CURVE_OUTPUTS + figure
