"""What the engine builds and records besides the weights: the optimiser and learning-rate schedule
the train block asks for, the logged loss means, model.pt's record of the run, where log lines go,
and what it does with unusable checkpoints or a dataset without optional fields. Written for the
engine's mutation survivors of 2026-12-05 (docs/testing.md): each test failed on the mutants
named in its docstring."""

from __future__ import annotations

import copy
import random
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cmfnet.data.dataset import Dataset
from cmfnet.data.io import IGNORE
from cmfnet.data.normalize import normalize_image
from cmfnet.training.cards import load_card
from cmfnet.training.config import TrainConfig
from cmfnet.training.contract import TrainingContext
from cmfnet.training.device import resolve_device
from cmfnet.training.engine import Trainer, seed_everything, state_hash

REPO = Path(__file__).resolve().parents[1]
FAST = {"iterations": 8, "batch_size": 2, "patch_size": [16, 16, 16], "val_interval": 4,
        "checkpoint_interval": 4, "log_interval": 4}


def make_trainer(tmp_path: Path, dataset: Path | Dataset, out: str = "out", card: str = "pce.yaml",
                 device: str | None = "cpu", **train: object) -> Trainer:
    card_obj = load_card(REPO / "methods" / card, ["network.width=2"])
    data = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    config = TrainConfig(**{**FAST, **train})
    if device is None:
        return Trainer(card_obj, data, 0, tmp_path / out, config)
    return Trainer(card_obj, data, 0, tmp_path / out, config, device=device)


@pytest.mark.parametrize("optimizer, schedule, poly", [("sgd", "auto", True), ("adam", "auto", False),
                                                        ("adam", "poly", True), ("sgd", "constant", False)])
def test_optimiser_and_learning_rate_follow_the_train_block(optimizer: str, schedule: str, poly: bool,
                                                            tmp_path: Path, tiny_dataset: Path) -> None:
    """auto is poly (exponent 0.9) for SGD and constant for Adam; SGD takes the block's momentum and
    weight decay (fails on ``!=`` for ``==`` in either choice, ``* 0.9`` for ``** 0.9``, or a
    dropped lr)."""
    trainer = make_trainer(tmp_path, tiny_dataset, optimizer=optimizer, schedule=schedule, lr=0.02,
                           momentum=0.8, weight_decay=1e-4, iterations=10)
    expected_type = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    assert type(trainer.optimizer) is expected_type
    group = trainer.optimizer.param_groups[0]
    assert group["lr"] == 0.02 and group["weight_decay"] == 1e-4
    if optimizer == "sgd":
        assert group["momentum"] == 0.8
    for iteration in (0, 3, 5, 10):
        want = 0.02 * (1 - iteration / 10) ** 0.9 if poly else 0.02
        assert trainer._lr_at(iteration) == pytest.approx(want, abs=1e-12), iteration


def test_a_restarted_schedule_starts_at_the_new_rate(tmp_path: Path, tiny_dataset: Path) -> None:
    """reset_optimizer (S2L's and DMSPS's stage 2) restarts the poly schedule from the current
    iteration with the rate given, or the block's rate without one."""
    trainer = make_trainer(tmp_path, tiny_dataset, optimizer="sgd", lr=0.02, iterations=10)
    trainer.iteration = 4
    trainer.reset_optimizer(0.5)
    assert (trainer.base_lr, trainer.lr_origin) == (0.5, 4)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.5
    assert trainer._lr_at(4) == 0.5 and trainer._lr_at(7) == pytest.approx(0.5 * 0.5 ** 0.9)
    trainer.reset_optimizer()
    assert trainer.base_lr == 0.02


def test_logged_rate_and_loss_are_each_windows_values(tmp_path: Path, tiny_dataset: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """train_log.csv's lr is the rate of the window's last step, its loss the window's mean (fails
    when the window's step count starts at 1)."""
    trainer = make_trainer(tmp_path, tiny_dataset, optimizer="sgd", val_interval=0)
    losses: list[float] = []
    original = trainer.method.loss

    def recording(model: torch.nn.Module, batch: object, step: object) -> tuple:
        loss, parts = original(model, batch, step)
        losses.append(float(loss.detach()))
        return loss, parts

    monkeypatch.setattr(trainer.method, "loss", recording)
    trainer.fit()
    log = pd.read_csv(tmp_path / "out" / "train_log.csv")
    assert log["iteration"].tolist() == [4, 8]
    assert log["loss"].tolist() == pytest.approx([np.mean(losses[:4]), np.mean(losses[4:])], rel=1e-6)
    assert log["lr"].tolist() == pytest.approx([trainer._lr_at(3), trainer._lr_at(7)])


def test_model_meta_records_the_cases_grid_and_time(tmp_path: Path, tiny_dataset: Path) -> None:
    """meta.json names the training, labelled and validation cases and the dataset's spacing, and
    the seconds to a tenth (fails when a case list is dropped or the rounding changes)."""
    dataset = Dataset(tiny_dataset)
    split = dataset.split(0)
    meta = make_trainer(tmp_path, dataset, "nested/run/out").fit()  # a folder that does not exist yet
    assert meta["train_cases"] == list(split["train"]) == meta["labelled_cases"]
    assert meta["val_cases"] == list(split["val"]) and meta["val_cases"]
    assert meta["spacing"] == [float(s) for s in dataset.meta["spacing"]]
    assert meta["seconds"] == round(meta["seconds"], 1) and meta["seconds"] > 0
    assert meta["fold"] == 0 and meta["method_id"] == "pce"
    assert (tmp_path / "nested" / "run" / "out" / "model.pt").is_file()


def test_a_fold_without_validation_cases_keeps_the_last_weights_and_no_dice(
        tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No validation cases: the final weights, no selected Dice, and a closing line without one
    (fails when the Dice is recorded anyway, or the line formats a missing Dice)."""
    trainer = make_trainer(tmp_path, tiny_dataset)
    trainer.val_cases = []
    meta = trainer.fit()
    assert meta["selected_iteration"] == 8 and meta["selected_val_dice"] is None
    assert capsys.readouterr().err.rstrip().endswith("selected iteration 8 (best)")


def test_a_dataset_without_spacing_or_normalisation_uses_the_defaults(tmp_path: Path, tiny_dataset: Path) -> None:
    """1 mm spacing and no normalisation record (fails when the defaults change)."""
    dataset = Dataset(tiny_dataset)
    dataset.meta.pop("spacing", None)
    dataset.meta.pop("normalization", None)
    trainer = make_trainer(tmp_path, dataset)
    assert trainer.spacing == (1.0, 1.0, 1.0) and trainer.normalization == {}
    case = trainer.train_cases[0]
    image, _ = dataset.load_image(case)
    loaded, _ = trainer._load_image(case)
    np.testing.assert_array_equal(loaded, normalize_image(image, dataset.channels, {}))


@pytest.mark.parametrize("terminal", [False, True])
def test_log_lines_go_to_stderr(terminal: bool, tmp_path: Path, tiny_dataset: Path,
                                capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Above tqdm's bar on a terminal, plain lines otherwise; never on stdout, which the CLI's
    summary owns (fails when either branch writes elsewhere)."""
    trainer = make_trainer(tmp_path, tiny_dataset)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    trainer.log("hello")
    captured = capsys.readouterr()
    assert captured.err == "[pce fold 0 it 0] hello\n" and captured.out == ""


def test_the_default_device_is_chosen_automatically(tmp_path: Path, tiny_dataset: Path) -> None:
    assert make_trainer(tmp_path, tiny_dataset, device=None).device == resolve_device("auto")


def test_compile_wraps_the_network_the_steps_call(tmp_path: Path, tiny_dataset: Path) -> None:
    """compile: true trains through torch.compile's wrapper of the same network (fails when the
    option is ignored); without it the steps call the network itself."""
    compiled = make_trainer(tmp_path, tiny_dataset, compile=True)
    assert compiled.step_model is not compiled.model and compiled.step_model._orig_mod is compiled.model
    plain = make_trainer(tmp_path, tiny_dataset)
    assert plain.step_model is plain.model


def test_on_cpu_no_loss_scaling(tmp_path: Path, tiny_dataset: Path) -> None:
    """float16 loss scaling is for CUDA only; on CPU the scaler must be off whatever amp says."""
    assert not make_trainer(tmp_path, tiny_dataset, amp=True).scaler.is_enabled()


@pytest.mark.parametrize("content, line", [
    ([1, 2], "has checkpoint format none, this cmfnet"),
    ({"format": 1, "hash": "another"}, "was written with another card, config, fold or dataset: starting afresh"),
])
def test_an_unusable_checkpoint_is_named_and_training_starts_afresh(
        content: object, line: str, tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A last.pt that is not a dict, or of another run, is said so and not resumed (fails when a
    non-dict reaches ``state.get`` or the message changes)."""
    (tmp_path / "out").mkdir()
    torch.save(content, tmp_path / "out" / "last.pt")
    trainer = make_trainer(tmp_path, tiny_dataset)
    assert not trainer._try_resume() and trainer.iteration == 0
    err = capsys.readouterr().err
    assert f"{tmp_path / 'out' / 'last.pt'} " in err and line in err


def test_an_unloadable_checkpoint_gives_the_loaders_reason(tmp_path: Path, tiny_dataset: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "last.pt").write_text("not a zip archive\n")
    assert not make_trainer(tmp_path, tiny_dataset)._try_resume()
    err = capsys.readouterr().err
    reason = err.split("weights_only=True (", 1)[1].split("): starting afresh")[0]
    with pytest.raises(Exception) as loader:
        torch.load(tmp_path / "out" / "last.pt", weights_only=True)
    assert reason == str(loader.value).strip().splitlines()[0][:160]


def test_the_mean_teacher_copies_the_students_batchnorm_statistics(
        tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The teacher averages the student's weights but takes its BatchNorm statistics as they are
    (fails when the teacher averages buffers too)."""
    trainer = make_trainer(tmp_path, tiny_dataset, iterations=3)
    trainer.method.teacher_decay = 0.9  # instance override: pCE with a mean teacher
    trainer.teacher = copy.deepcopy(trainer.model)
    buffers: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []

    def record(context: TrainingContext, iteration: int) -> None:
        buffers.append(([b.clone() for b in trainer.model.buffers()], [b.clone() for b in trainer.teacher.buffers()]))

    monkeypatch.setattr(trainer.method, "after_step", record)
    trainer.fit()
    assert buffers and any(b.is_floating_point() for b in trainer.model.buffers())
    for student, teacher in buffers:
        for s, t in zip(student, teacher):
            assert torch.equal(s, t)


def test_a_replaced_target_is_sampled_anew(tmp_path: Path, tiny_dataset: Path) -> None:
    """DMSPS's stage 2 replaces each case's target: patches then hold the new target's labelled
    voxels, not positions indexed from the old scribbles (fails when the sampler keeps its index)."""
    trainer = make_trainer(tmp_path, tiny_dataset)
    trainer._load_volumes()
    trainer.sampler.sample(8)  # index every case's old labelled voxels
    context = trainer.context()
    for case, volume in trainer.volumes.items():
        target = np.full_like(volume.target, IGNORE)
        target[:2, :2, :2] = 0
        target[0, 0, 0] = 1  # labelled only in one corner
        context.replace_target(case, target)
    for _ in range(10):
        _, targets, _, _ = trainer.sampler.sample(4)
        assert all((t != IGNORE).any() for t in targets)


def test_seeding_sets_every_global_generator() -> None:
    """seed_everything(s) leaves random, np.random and torch as their own seeding with s leaves them
    (fails when numpy's seed is reduced by another modulus)."""
    for seed in (1, 5, 2**32 + 7):
        seed_everything(seed)
        drawn = (random.random(), float(np.random.random()), float(torch.rand(1)))
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        assert drawn == (random.random(), float(np.random.random()), float(torch.rand(1))), seed


def test_each_step_trains_at_the_scheduled_rate(tmp_path: Path, tiny_dataset: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The optimiser steps with the poly rate of its iteration, not the first one (fails when the
    rate is written anywhere but the param groups' ``lr``)."""
    trainer = make_trainer(tmp_path, tiny_dataset, optimizer="sgd", lr=0.02)
    rates: list[tuple[int, float]] = []
    monkeypatch.setattr(trainer.method, "after_step", lambda context, iteration: rates.append(
        (iteration, trainer.optimizer.param_groups[0]["lr"])))
    trainer.fit()
    assert rates == [(i, pytest.approx(trainer._lr_at(i))) for i in range(8)]
    assert rates[-1][1] < 0.02 / 2


def test_log_rows_carry_their_iteration_and_time(tmp_path: Path, tiny_dataset: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A validation between log intervals still writes a row with its iteration; sec_per_it is the
    window's seconds per step, so the rows add up to at most the run's time; the log lines leave
    the iteration to their prefix; meta.json records the device."""
    trainer = make_trainer(tmp_path, tiny_dataset, val_interval=3, log_interval=4)
    meta = trainer.fit()
    log = pd.read_csv(tmp_path / "out" / "train_log.csv")
    assert log["iteration"].tolist() == [3, 4, 6, 8]
    assert log["val_dice"].notna().tolist() == [True, False, True, True]
    logged = log.loc[log["sec_per_it"].notna(), "iteration"]
    steps = logged.diff().fillna(logged.iloc[0])  # each row's window: the steps since the last row
    per_row = log["sec_per_it"].dropna()
    assert (per_row > 0).all() and float((per_row * steps).sum()) <= meta["seconds"] + 0.1
    assert meta["device"] == "cpu"
    lines = [line for line in capsys.readouterr().err.splitlines() if "loss=" in line]
    assert lines and all(line.startswith("[pce fold 0 it ") and "iteration=" not in line for line in lines)


def test_a_fresh_run_starts_a_fresh_train_log(tmp_path: Path, tiny_dataset: Path) -> None:
    """Without a usable last.pt, a train_log.csv left by another run is replaced, not extended
    (fails when a fresh start is treated as a resume at iteration 0)."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train_log.csv").write_text("iteration,stale_column\n0,1\n")
    make_trainer(tmp_path, tiny_dataset).fit()
    log = pd.read_csv(tmp_path / "out" / "train_log.csv")
    assert "stale_column" not in log.columns and log["iteration"].tolist() == [4, 8]


def test_scribble_validation_scores_against_the_cards_scribbles(tmp_path: Path, tiny_dataset: Path) -> None:
    """val_reference: scribble validates against each validation case's scribbles of the card's
    variant, never its labels."""
    trainer = make_trainer(tmp_path, tiny_dataset, val_reference="scribble")
    data = trainer._validation_data()
    assert len(data) == len(trainer.val_cases) > 0
    for case, (_, reference) in zip(trainer.val_cases, data):
        np.testing.assert_array_equal(reference, trainer.dataset.load_scribble(case, trainer.card.scribble_variant))


def test_the_checkpoint_hash_tells_folds_apart(tmp_path: Path, tiny_dataset: Path) -> None:
    """A last.pt of another fold is never resumed: the fold is part of the run's hash (fails when
    the trainer hashes without it)."""
    card = load_card(REPO / "methods" / "pce.yaml", ["network.width=2"])
    dataset, config = Dataset(tiny_dataset), TrainConfig(**FAST)
    trainers = [Trainer(card, dataset, fold, tmp_path / "out", config, device="cpu") for fold in (0, 1)]
    assert [t.state_hash for t in trainers] == [state_hash(card.to_dict(), config, fold, dataset) for fold in (0, 1)]
    assert trainers[0].state_hash != trainers[1].state_hash
