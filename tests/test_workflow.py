"""The Snakemake workflow plans exactly what a change implies, read from Snakemake's own dry runs.

Every test works in a copy of the repository (Snakefile, profiles, workflow, config, cards and
the Python sources, imported from the copy through PYTHONPATH) so it may edit code and cards.
One real smoke run (one fold, FullySup and pCE) is built once per module, and once more with a
toy method and its sweep. Their trainings run for real: a job that `snakemake --touch` marks done
records no params, so a later change of settings would go unseen; the cheap jobs after them are
marked done with `--touch`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from cmfnet.training.config import TrainConfig, resolve_train_config
from cmfnet.training.train import layered_train_block
from cmfnet.training.cards import load_card
from cmfnet.provenance import plugin_sources, trained_as
from test_pipeline import TOY_PLUGIN  # the toy of the one-module-plus-one-card test

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
CMFNET = Path(sys.executable).with_name("cmfnet")
COPIED = ("Snakefile", "profiles", "workflow", "config", "methods", "cmfnet", "baselines")
SMOKE = ("--configfile", "config/smoke.yaml")

pytestmark = pytest.mark.slow

TOY_CARD = "name: Toy\nplugin: toy_method.py\nsupervision: scribble\nscribble_variant: sim\n" \
           "network: {arch: vnet, width: 4}\nparams: {weight: 0.05}\n"
# a sweep of the toy card: `same` resolves to the base card's settings, `w02` does not
TOY_SWEEP = "extends: toy.yaml\ntable: fig_toy\nvariants:\n" \
            "  w02: {name: 'weight=0.2', set: {params.weight: 0.2}}\n" \
            "  same: {name: 'weight=0.05', set: {params.weight: 0.05}}\n"
FAST_TRAIN = {"iterations": 4, "batch_size": 1, "patch_size": [16, 32, 32], "val_interval": 2,
              "checkpoint_interval": 2, "log_interval": 2}
WITH_TOY = ("--config", "methods=[fullysup,pce,toy]", "ablations=[toy_sweep]")


def repo_copy(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    for name, text in {"toy_method.py": TOY_PLUGIN, "toy.yaml": TOY_CARD, "toy_sweep.yaml": TOY_SWEEP}.items():
        (root / "methods" / name).write_text(text)
    # these tests read plans, not results: the copy's smoke preset trains for seconds, not minutes
    smoke = yaml.safe_load((root / "config" / "smoke.yaml").read_text())
    smoke["train"] = FAST_TRAIN
    (root / "config" / "smoke.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))
    return root


def snakemake(work: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run Snakemake as the README does (from the working directory, default profile applied),
    importing cmfnet and baselines from the copy."""
    env = {**os.environ, "PYTHONPATH": str(work),
           "PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(SNAKEMAKE), *args], cwd=work, capture_output=True, text=True, env=env,
                          timeout=timeout)


def dry_run(work: Path, *args: str) -> str:
    result = snakemake(work, "-n", "--cores", "2", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def jobs_of(text: str) -> dict[str, list[list[str]]]:
    """Rule name -> the outputs of each job a dry run's text plans."""
    jobs: dict[str, list[list[str]]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", text):
        match = re.match(r"(?:local)?rule (\w+):\n", block)
        if match:
            output = re.search(r"^    output: (.+)$", block, re.MULTILINE)
            jobs.setdefault(match.group(1), []).append(output.group(1).split(", ") if output else [])
    return jobs


def planned(work: Path, *args: str) -> dict[str, list[list[str]]]:
    return jobs_of(dry_run(work, *args))


def rows(jobs: dict[str, list[list[str]]], rule: str) -> set[str]:
    """The method ids of a rule's planned jobs (results/<kind>/<dataset>/<method>/...)."""
    return {outputs[0].split("/")[3] for outputs in jobs.get(rule, [])}


def run_to_the_end(work: Path, *args: str) -> None:
    result = snakemake(work, "--cores", "2", *args)
    assert result.returncode == 0, result.stderr[-4000:]
    assert planned(work, *args) == {}


def finish_by_touch(work: Path, *args: str) -> None:
    """Mark the planned jobs done without running them: placeholder outputs, then `--touch`."""
    for rule, jobs in planned(work, *args).items():
        for path in (work / output for outputs in jobs for output in outputs):
            if rule == "predict":
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("placeholder\n")
    result = snakemake(work, "--touch", "--cores", "1", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned(work, *args) == {}


def edit(path: Path, text: str = "\n# edited by a test\n") -> None:
    path.write_text(path.read_text() + text)


def trained(jobs: dict[str, list[list[str]]]) -> set[str]:
    return rows(jobs, "train")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished smoke run (FullySup and pCE, fold 0), trained for real once per module."""
    work = repo_copy(tmp_path_factory.mktemp("finished") / "repo")
    run_to_the_end(work, *SMOKE)
    return work


@pytest.fixture(scope="module")
def finished_with_toy(finished: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke run plus the toy method and its sweep: the two trainings for real (`same` reuses
    toy's model), their predictions, metrics and tables marked done by `--touch`."""
    work = tmp_path_factory.mktemp("with_toy") / "repo"
    shutil.copytree(finished, work, symlinks=True)
    result = snakemake(work, "--cores", "2", "--until", "train", *SMOKE, *WITH_TOY)
    assert result.returncode == 0, result.stderr[-4000:]
    finish_by_touch(work, *SMOKE, *WITH_TOY)
    return work


def copy_of(source: Path, tmp_path: Path) -> Path:
    work = tmp_path / "repo"
    shutil.copytree(source, work, symlinks=True)
    return work


# -- issue 9: the profile, the schema, the folds ----------------------------------------------------

def test_readme_commands_apply_the_workflow_profiles(tmp_path: Path) -> None:
    work = repo_copy(tmp_path / "repo")
    result = snakemake(work, "-n", "--cores", "2", *SMOKE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Using workflow specific profile profiles/default" in result.stderr
    assert "Shell command: cmfnet synth" in result.stdout  # printshellcmds, set by that profile
    # the cluster profile is found where the README says (its executor plugin is not installed here)
    cluster = snakemake(work, "-n", "--workflow-profile", "profiles/slurm", *SMOKE)
    assert "Using workflow specific profile profiles/slurm" in cluster.stderr
    assert (REPO / "profiles" / "slurm" / "config.yaml").is_file()


@pytest.mark.parametrize("typo", ["methds: [pce]", "dataset: {synth: {foldz: 2}}"])
def test_a_config_typo_is_refused_at_parse_time(tmp_path: Path, typo: str) -> None:
    work = repo_copy(tmp_path / "repo")
    (work / "config" / "typo.yaml").write_text(typo + "\n")
    result = snakemake(work, "-n", "--cores", "1", "--configfile", "config/smoke.yaml", "config/typo.yaml")
    assert result.returncode != 0
    where, wrong = {"methds": ("config", "methds"), "dataset": ("config.dataset.synth", "foldz")}[typo.split(":")[0]]
    assert f"{where}: unknown key '{wrong}' (known keys: " in result.stdout + result.stderr
    assert not (work / "results").exists()


def test_folds_outside_the_splits_are_refused_when_the_dag_is_built(finished: Path, tmp_path: Path) -> None:
    work = repo_copy(tmp_path / "repo")
    synth = snakemake(work, "-n", "--cores", "1", *SMOKE, "--config", "folds=[0,7]")
    assert synth.returncode != 0
    assert "config.folds: fold 7 does not exist: dataset.synth.folds gives 3 folds, 0 to 2" in synth.stdout + synth.stderr
    assert not (work / "results").exists()
    # a dataset folder: checked against its dataset.json
    dataset = finished / "results" / "data" / "smoke-npc"
    (work / "config" / "mine.yaml").write_text(
        yaml.safe_dump({"dataset": {"name": "mine", "source": "path", "path": str(dataset)}, "folds": [0, 7]}))
    path = snakemake(work, "-n", "--cores", "1", "--configfile", "config/smoke.yaml", "config/mine.yaml")
    assert path.returncode != 0
    assert f"fold 7 does not exist: {dataset / 'dataset.json'} gives 3 folds" in path.stdout + path.stderr


def test_a_second_seed_trains_every_method_and_fold_again_and_only_that(finished: Path, tmp_path: Path) -> None:
    work = copy_of(finished, tmp_path)
    jobs = planned(work, *SMOKE, "--config", "seeds=[0,1]")
    assert set(jobs) == {"train", "predict", "evaluate", "tables", "curves", "qualitative", "all"}
    assert sorted(out[0] for out in jobs["train"]) == [f"results/models/smoke-npc/{m}/seed1/fold0/model.pt"
                                                       for m in ("fullysup", "pce")]


def test_a_train_seed_in_the_config_points_to_the_seeds_list(tmp_path: Path) -> None:
    work = repo_copy(tmp_path / "repo")
    (work / "config" / "seeded.yaml").write_text("train: {seed: 3}\n")
    result = snakemake(work, "-n", "--cores", "1", "--configfile", "config/smoke.yaml", "config/seeded.yaml")
    assert result.returncode != 0
    assert "config.train.seed: the training seeds are the top-level list `seeds:`" in result.stdout + result.stderr


# -- issue 15: a change reruns exactly what depends on it --------------------------------------------

def test_adding_a_method_to_a_finished_run_plans_only_that_method_and_the_tables(
        finished: Path, tmp_path: Path) -> None:
    work = copy_of(finished, tmp_path)
    jobs = planned(work, *SMOKE, "--config", "methods=[fullysup,pce,toy]")
    assert set(jobs) == {"train", "predict", "evaluate", "tables", "curves", "qualitative", "all"}
    for rule in ("train", "predict", "evaluate"):
        assert len(jobs[rule]) == 1 and rows(jobs, rule) == {"toy"}, jobs


def test_a_user_config_file_adds_its_rows_to_a_preset(finished: Path, tmp_path: Path) -> None:
    work = copy_of(finished, tmp_path)
    mine = yaml.safe_load((work / "config" / "my-method.example.yaml").read_text())
    mine["extra_methods"] = ["toy", "toy_sweep.w02"]
    (work / "config" / "my-method.yaml").write_text(yaml.safe_dump(mine))
    text = dry_run(work, "--configfile", "config/smoke.yaml", "config/my-method.yaml")
    jobs = jobs_of(text)
    assert trained(jobs) == rows(jobs, "evaluate") == {"toy", "toy_sweep.w02"}
    assert "--order fullysup,pce,toy,toy_sweep.w02" in text  # the preset's rows, then the user's


@pytest.mark.parametrize(("source", "method"), [("methods/toy_method.py", "toy"), ("baselines/pce.py", "pce")])
def test_editing_a_plugin_retrains_only_its_method(finished_with_toy: Path, tmp_path: Path,
                                                   source: str, method: str) -> None:
    work = copy_of(finished_with_toy, tmp_path)
    edit(work / source)
    jobs = planned(work, *SMOKE, *WITH_TOY)
    # the sweep runs the toy plugin; FullySup is the pCE plugin with the full mask as supervision
    expected = {"toy", "toy_sweep.w02"} if method == "toy" else {"pce", "fullysup"}
    assert trained(jobs) == expected
    assert set(jobs) == {"train", "predict", "evaluate", "tables", "curves", "qualitative", "all"}


def test_editing_a_base_card_retrains_its_variants(finished_with_toy: Path, tmp_path: Path) -> None:
    work = copy_of(finished_with_toy, tmp_path)
    edit(work / "methods" / "toy.yaml", "# a comment is not a setting\n")
    assert planned(work, *SMOKE, *WITH_TOY) == {}
    card = work / "methods" / "toy.yaml"
    # an option the preset's network: block does not override (it sets width and dropout)
    card.write_text(card.read_text().replace("width: 4}", "width: 4, act: prelu}"))
    jobs = planned(work, *SMOKE, *WITH_TOY)
    assert trained(jobs) == {"toy", "toy_sweep.w02"}  # toy_sweep.same reads toy's model
    assert rows(jobs, "predict") == {"toy", "toy_sweep.w02", "toy_sweep.same"}


def test_identical_settings_train_once(finished: Path, tmp_path: Path) -> None:
    work = copy_of(finished, tmp_path)
    text = dry_run(work, *SMOKE, *WITH_TOY)
    assert trained(jobs_of(text)) == {"toy", "toy_sweep.w02"}
    same = re.search(r"input: (\S+), \S+\n    output: results/predictions/smoke-npc/toy_sweep.same/", text)
    assert same and same.group(1) == "results/models/smoke-npc/toy/seed0/fold0/model.pt"


def test_deleting_a_sweep_table_plans_its_rebuild(finished_with_toy: Path, tmp_path: Path) -> None:
    work = copy_of(finished_with_toy, tmp_path)
    for output in ("results/tables/fig_toy.md", "results/figures/fig_toy.png"):
        (work / output).unlink()
    jobs = planned(work, "results/tables/fig_toy.md", *SMOKE, *WITH_TOY)  # a target of its own
    assert list(jobs) == ["tables"] and "results/figures/fig_toy.png" in jobs["tables"][0]
    assert set(planned(work, *SMOKE, *WITH_TOY)) == {"tables", "all"}  # and part of a full run


def test_the_readme_table_recipe_rebuilds_only_the_tables(finished: Path, tmp_path: Path) -> None:
    work = copy_of(finished, tmp_path)
    edit(work / "cmfnet" / "evaluation" / "tables.py")
    assert set(planned(work, "results/tables/table1.md", *SMOKE)) == {"tables"}
    # and the recipe that rebuilds them without a change
    fresh = copy_of(finished, tmp_path / "again")
    assert set(planned(fresh, "--forcerun", "tables", *SMOKE)) == {"tables", "all"}


def test_a_preset_network_block_changes_every_card_and_retrains_every_method(finished: Path,
                                                                             tmp_path: Path) -> None:
    """`network:` in a config applies to every card: each train job gets it as --set, and it is a
    training setting (the smoke run's models retrain)."""
    work = copy_of(finished, tmp_path)
    (work / "config" / "narrow.yaml").write_text("network: {width: 4, norm: instance}\n")
    text = dry_run(work, "--configfile", "config/smoke.yaml", "config/narrow.yaml")
    assert trained(jobs_of(text)) == {"fullysup", "pce"}
    assert text.count("--set 'network.norm=\"instance\"' --set 'network.width=4'") == 2


def test_gpu_resources_come_from_the_config_not_the_planning_host(tmp_path: Path) -> None:
    work = repo_copy(tmp_path / "repo")
    common = (work / "workflow" / "rules" / "common.smk").read_text()
    assert "torch" not in common
    for extra, gpus in ((), "0"), (("device=cuda",), "1"), (("device=cuda", "gpus=2"), "2"):
        text = dry_run(work, *SMOKE, *(("--config", *extra) if extra else ()), "--until", "train")
        assert re.search(rf"rule train:(.|\n)*?resources: .*gpu={gpus}", text), text[-2000:]


def test_bumping_the_protocol_version_retrains_every_method(finished: Path, tmp_path: Path) -> None:
    work = copy_of(finished, tmp_path)
    bumped = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["protocol_version"] + 1
    assert trained(planned(work, *SMOKE, "--config", f"protocol_version={bumped}")) == {"fullysup", "pce"}


def test_a_by_hand_run_with_the_preset_file_trains_with_the_pipelines_block(finished: Path) -> None:
    """docs/adding-a-method.md: `cmfnet train ... --train-config config/config.yaml --train-config
    config/smoke.yaml` matches the pipeline; smoke.yaml alone does not (it overrides the default)."""
    preset: dict = {}
    files = [str(finished / "config" / name) for name in ("config.yaml", "smoke.yaml")]
    for name in files:  # how Snakemake merges the pipeline's config
        update_config(preset, yaml.safe_load(Path(name).read_text()))
    card = load_card(finished / "methods" / "pce.yaml")
    by_hand = resolve_train_config(card, layered_train_block(files))
    recorded = json.loads((finished / "results" / "models" / "smoke-npc" / "pce" / "seed0" / "fold0" / "meta.json").read_text())
    assert by_hand.settings() == recorded["train"] == resolve_train_config(card, preset["train"]).settings()
    assert by_hand.settings() != TrainConfig().settings()  # without --train-config: the engine's own block
    assert by_hand.settings() != resolve_train_config(card, layered_train_block(files[1:])).settings()


def test_tables_names_the_folder_it_searched(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    result = subprocess.run([str(CMFNET), "tables", "--results", str(tmp_path), "--out", str(tmp_path / "t")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{tmp_path / 'metrics'}: no per-case metric CSVs found" in result.stderr


def test_lint_is_clean(tmp_path: Path) -> None:
    work = repo_copy(tmp_path / "repo")
    result = snakemake(work, "--lint")
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize(("row", "model"), [
    ("fig6_alpha.alpha0p8@mm", "cmfnet"), ("fig6_lambda.lambda0p2@ct", "cmfnet"), ("table7.ssl_imr_imc", "cmfnet"),
    ("table6.mfl_cfe_cff", "cmfnet"), ("table6.mfl", "table6.mfl"), ("table5.ct3_mr4@mr", "table5.ct3_mr4")])
def test_the_repos_sweep_points_equal_to_cmfnet_read_its_model(row: str, model: str) -> None:
    preset = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["train"]
    assert trained_as(REPO / "methods", row, preset, protocol_version=1) == model


def test_a_baseline_trains_from_its_module_and_the_baseline_helpers_it_imports() -> None:
    def sources(card: str) -> list[str]:
        return [str(path.relative_to(REPO)) for path in plugin_sources(load_card(REPO / "methods" / card))]

    assert sources("em.yaml") == ["baselines/em.py", "baselines/regularizers.py"]
    assert sources("pce.yaml") == ["baselines/pce.py"]
    assert sources("cmfnet.yaml") == ["baselines/cmfnet.py"]  # the rest of cmfnet/ is the shared protocol


# -- issue 13: the semi-supervised rows, one per labelled fraction, and a table per fraction --------

#: config/semi.yaml's semi rows -> their fraction in percent
SEMI_CARDS = ("semi_suponly", "semi_meanteacher", "semi_uamt", "semi_cps", "semi_xmodal_cps", "semi_smms")
SEMI_ROWS = {f"{card}+{fraction}": percent for card in SEMI_CARDS for fraction, percent in ((0.1, "10"), (0.2, "20"))}
TAGS = re.compile(r"--tag 'method=([^']*)' --tag 'method_name=[^']*' --tag 'table=([^']*)' "
                  r"--tag 'data=([^']*)' --tag 'fold=(\d+)' --tag 'seed=(\d+)' --tag 'config=(\w+)'")


def test_the_semi_preset_trains_each_semi_row_once_per_fraction_and_fills_a_table_per_fraction(
        tmp_path: Path) -> None:
    work = repo_copy(tmp_path / "repo")
    text = dry_run(work, "--configfile", "config/semi.yaml")
    jobs = jobs_of(text)
    assert trained(jobs) == {"fullysup", *SEMI_ROWS}
    assert len(jobs["train"]) == 13 * 2 * 1  # rows x seeds (config/config.yaml's) x fold 0
    blocks = re.findall(r"--out results/models/synth-npc-semi/([^/]+)/seed\d+/fold\d+ "
                        r"--train-config '([^']*)'", text)
    assert len(blocks) == 26
    for row, block in blocks:
        train = json.loads(block)
        assert train.get("labelled_fraction") == (float(row.partition("+")[2]) if row in SEMI_ROWS else None)
        assert (train["batch_size"], train["labelled_batch_size"], train["iterations"]) == (4, 2, 600)
    assert "--reference semi_smms" in text  # every semi row is tested against SMMS at its fraction
    tables = {f"results/tables/{name}.{ext}" for name in ("semi_10", "semi_20", "table1")
              for ext in ("csv", "md", "tex")}
    assert tables <= set(jobs["tables"][0])
    tags = {(method, table, data) for method, table, data, *_ in TAGS.findall(text)}
    assert tags == {("fullysup", "table1;semi_10;semi_20", "masks"),
                    *((row, f"semi_{percent}", f"{percent} % labelled") for row, percent in SEMI_ROWS.items())}
    assert "results/data/synth-npc-semi/scribblesTr" not in text  # no row here learns from scribbles


def test_the_default_presets_jobs_keep_the_committed_results_valid(tmp_path: Path) -> None:
    """The semi regime leaves every other row as it was: the default preset plans the models of the
    committed set results/reference/default, and its metrics rows would carry the same method,
    table, data, fold, seed and provenance hash (which holds the training settings), so none of the
    committed results is out of date. After a change that does invalidate them (a protocol bump),
    rerun the default preset and freeze a new set."""
    work = repo_copy(tmp_path / "repo")
    text = dry_run(work)
    reference = REPO / "results" / "reference" / "default"
    assert trained(jobs_of(text)) == {path.name for path in (reference / "logs").iterdir()}
    committed = set()
    for path in (reference / "metrics").rglob("*.csv"):
        with path.open() as file:
            row = next(csv.DictReader(file))
        committed.add(tuple(row[key] for key in ("method", "table", "data", "fold", "seed", "config")))
    assert set(TAGS.findall(text)) == committed
    assert "labelled_fraction" not in text


@pytest.mark.parametrize(("setting", "message"), [
    ("train: {labelled_fraction: 0.1}", "config.train.labelled_fraction: the labelled fractions are the top-level"),
    ("labelled_fractions: [0.1, 1.0]", "config.labelled_fractions[1]: 1.0 is greater than or equal to the maximum")])
def test_labelled_fractions_are_one_top_level_list_of_fractions(tmp_path: Path, setting: str, message: str) -> None:
    work = repo_copy(tmp_path / "repo")
    (work / "config" / "fractions.yaml").write_text(setting + "\n")
    result = snakemake(work, "-n", "--cores", "1", "--configfile", "config/semi.yaml", "config/fractions.yaml")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_labelled_fractions_given_on_the_command_line_are_numbers(tmp_path: Path) -> None:
    work = repo_copy(tmp_path / "repo")
    jobs = planned(work, "--configfile", "config/semi.yaml", "--config", "labelled_fractions=[0.3]",
                   "--until", "train")
    assert trained(jobs) == {"fullysup", *(f"{card}+0.3" for card in SEMI_CARDS)}


def test_the_scribble_protocol_preset_runs_each_method_on_each_variant_without_table1(tmp_path: Path) -> None:
    """A preset of variant files alone (no Table I row) plans its rows and table, and no
    qualitative figure (it draws Table I's rows); the sim rows read the default run's models."""
    work = repo_copy(tmp_path / "repo")
    text = dry_run(work, "--configfile", "config/scribble-protocols.yaml")
    jobs = jobs_of(text)
    assert trained(jobs) == {"pce", "tv", "cmfnet", *(f"scribble_protocols{suffix}.{variant}"
                                                      for suffix in ("", "_tv", "_cmfnet")
                                                      for variant in ("autobg", "scribblebench"))}
    assert "qualitative" not in jobs
    assert "results/tables/scribble_protocols.md" in jobs["tables"][0]
    assert "--reference scribble_protocols_cmfnet.sim" in text


def test_the_word_phantom_preset_fills_table2_from_the_fixed_split(tmp_path: Path) -> None:
    """main_table names the table the configured rows fill, and the word phantom gets no --folds
    (its synth refuses one: WORD has a fixed split), so the preset plans Table II on fold 0."""
    work = repo_copy(tmp_path / "repo")
    text = dry_run(work, "--configfile", "config/word-phantom.yaml")
    jobs = jobs_of(text)
    assert "results/tables/table2.csv" in jobs["tables"][0] and "results/tables/table1.csv" not in text
    assert "cmfnet synth --kind word" in text and "--folds" not in text
    assert {outputs[0].split("/")[5] for outputs in jobs["train"]} == {"fold0"}
    bad = snakemake(work, "-n", "--cores", "1", "--configfile", "config/word-phantom.yaml", "--config", "folds=[1]")
    assert bad.returncode != 0 and "fold 1 does not exist: the word phantom's one fixed split gives 1 folds" in bad.stdout + bad.stderr


def test_the_nnunet_short_preset_adds_only_nnunet_pl_on_the_default_folds_and_seeds(tmp_path: Path) -> None:
    """config/nnunet-short.yaml over the default preset trains nnU-Net+pL alone, once per default
    fold and seed (its metrics join the default run's), on nnU-Net's 10-epoch schedule."""
    work = repo_copy(tmp_path / "repo")
    jobs = planned(work, "--configfile", "config/config.yaml", "config/nnunet-short.yaml")
    assert trained(jobs) == {"nnunet_pl_10ep"}
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert sorted("/".join(outputs[0].split("/")[4:6]) for outputs in jobs["train"]) == sorted(
        f"seed{seed}/fold{fold}" for seed in default["seeds"] for fold in default["folds"])
    card = load_card(REPO / "methods" / "nnunet_pl_10ep.yaml")
    assert card.params["epochs"] == 10 and card.supervision == "scribble" and card.scribble_variant == "sim"
