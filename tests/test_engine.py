"""The training engine: sampling, resume after a kill, EMA teacher, selection, data hygiene."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cmfnet.training.contract import TrainingContext
from cmfnet.training.engine import Trainer
from cmfnet.training.model import TrainedModel
from cmfnet.training.sampling import PatchSampler, TrainVolume
from cmfnet.training.config import TrainConfig
from cmfnet.errors import InputError
from cmfnet.data.io import IGNORE, Geometry
from cmfnet.data.dataset import Dataset
from cmfnet.training.losses import partial_ce
from cmfnet.training.cards import load_card

FAST = {"iterations": 8, "batch_size": 1, "patch_size": [16, 32, 32], "val_interval": 4,
        "checkpoint_interval": 4, "log_interval": 4}


def write_card(tmp_path: Path, text: str = "", name: str = "card.yaml") -> Path:
    path = tmp_path / name
    path.write_text("name: pCE\nplugin: baselines.pce\nnetwork: {arch: vnet, width: 2}\n" + text)
    return path


def make_trainer(tmp_path: Path, dataset: Path, out: str = "out", card_text: str = "", **train: object) -> Trainer:
    card = load_card(write_card(tmp_path, card_text))
    return Trainer(card, Dataset(dataset), 0, tmp_path / out, TrainConfig(**{**FAST, **train}), device="cpu")


def test_partial_ce_is_safe_without_labels() -> None:
    logits = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    loss = partial_ce(logits, torch.full((1, 4, 4, 4), IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_sampler_patches_always_hold_labelled_voxels() -> None:
    rng = np.random.default_rng(0)
    target = np.full((20, 40, 40), IGNORE, np.uint8)
    target[3, 30, 30] = 1  # one foreground voxel near a corner
    target[18, 2, 5] = 0
    volume = TrainVolume(np.zeros((1, 20, 40, 40), np.float32), target, Geometry.default((20, 40, 40), (1, 1, 1)))
    sampler = PatchSampler({"a": volume}, [8, 16, 16], fg_fraction=0.5, rng=rng)
    for _ in range(200):
        _, targets, _, boxes = sampler.sample(1)
        assert targets.shape == (1, 8, 16, 16)
        assert (targets != IGNORE).any()
        assert all(s.stop - s.start == p for s, p in zip(boxes[0], [8, 16, 16]))


def kill_after(monkeypatch: pytest.MonkeyPatch, trainer: Trainer, iteration: int) -> None:
    """Make ``trainer.fit()`` die (as a kill would) right after step ``iteration``."""
    def die(context: TrainingContext, it: int) -> None:
        if it == iteration:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer.method, "after_step", die)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


def _log_rows(out: Path) -> list[dict[str, str]]:
    """train_log.csv without its timing column (the only one that differs between equal runs)."""
    import csv

    with open(out / "train_log.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "sec_per_it"} for row in csv.DictReader(handle)]


# Patches smaller than the 16x32x32 volumes, so patch positions are random; dropout is on (the
# card's V-Net default 0.5); val_interval=0 selects the last iteration, which comes after the kill.
AFTER_KILL = {"patch_size": [16, 16, 16], "batch_size": 2, "val_interval": 0}


@pytest.mark.parametrize("selection", [{}, {"selection": "last", "val_interval": 4},
                                       {"selection": "ema", "val_interval": 4, "ema_decay": 0.5}])
def test_resume_after_kill_matches_uninterrupted_run(selection: dict, tmp_path: Path, tiny_dataset: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Also with selection: last and a validation at the checkpoint's iteration, where a resume must
    not mistake the checkpoint's weights for the selected ones."""
    settings = {**AFTER_KILL, **selection}
    full = make_trainer(tmp_path, tiny_dataset, "full", **settings)
    full.fit()
    reference = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["weights"]

    kill_after(monkeypatch, make_trainer(tmp_path, tiny_dataset, "killed", **settings), 5)
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["iteration"] == 4
    assert not (tmp_path / "killed" / "model.pt").exists()

    resumed = make_trainer(tmp_path, tiny_dataset, "killed", **settings)
    meta = resumed.fit()
    assert resumed.iteration == 8 and meta["selected_iteration"] == 8
    assert not (tmp_path / "killed" / "last.pt").exists()
    weights = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["weights"]
    for key, value in reference.items():
        assert torch.equal(value, weights[key]), key
    assert _log_rows(tmp_path / "killed") == _log_rows(tmp_path / "full")


@pytest.mark.parametrize("change", ["card", "train config"])
def test_changed_config_does_not_resume_stale_checkpoint(change: str, tmp_path: Path, tiny_dataset: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A card or train config that differs from the checkpoint's trains from scratch: the result
    equals a fresh run with the new settings (a stale resume would carry the old weights on)."""
    card_path = write_card(tmp_path)

    def trainer(out: str, changed: bool) -> Trainer:
        card = load_card(card_path, ["network.dropout=0.2"] if changed and change == "card" else [])
        train = {**FAST, **AFTER_KILL, **({"lr": 0.01} if changed and change == "train config" else {})}
        return Trainer(card, Dataset(tiny_dataset), 0, tmp_path / out, TrainConfig(**train), device="cpu")

    kill_after(monkeypatch, trainer("out", changed=False), 5)
    assert (tmp_path / "out" / "last.pt").is_file()
    stale = trainer("out", changed=True)
    stale.fit()
    trainer("fresh", changed=True).fit()
    assert stale.iteration == 8
    weights = torch.load(tmp_path / "out" / "model.pt", weights_only=True)["weights"]
    fresh = torch.load(tmp_path / "fresh" / "model.pt", weights_only=True)["weights"]
    for key, value in fresh.items():
        assert torch.equal(value, weights[key]), key
    assert _log_rows(tmp_path / "out") == _log_rows(tmp_path / "fresh")


def test_teacher_is_an_ema_of_the_student_from_iteration_zero(tmp_path: Path, tiny_dataset: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Mean-teacher warm-up: decay_i = min(1 - 1/(i + 1), d), so the teacher copies the student at
    iteration 0 and averages ever longer afterwards, up to the method's decay."""
    trainer = make_trainer(tmp_path, tiny_dataset, iterations=4)
    trainer.method.teacher_decay = 0.6  # instance override: the plugin class stays pCE; reached at it 2
    trainer.teacher = copy.deepcopy(trainer.model)
    with torch.no_grad():
        for p in trainer.teacher.parameters():
            p.add_(5.0)  # a teacher that skipped iteration 0's copy would keep this offset
    snapshots: list[tuple[int, list[torch.Tensor], list[torch.Tensor]]] = []

    def record(context: TrainingContext, iteration: int) -> None:  # runs right after the teacher update
        snapshots.append((iteration, [p.detach().clone() for p in trainer.model.parameters()],
                          [p.detach().clone() for p in trainer.teacher.parameters()]))

    monkeypatch.setattr(trainer.method, "after_step", record)
    trainer.fit()
    assert [it for it, _, _ in snapshots] == [0, 1, 2, 3]
    expected: list[torch.Tensor] = []
    for iteration, student, teacher in snapshots:
        decay = min(1.0 - 1.0 / (iteration + 1), 0.6)
        expected = [decay * t + (1 - decay) * s for t, s in zip(expected or student, student)]
        for got, want in zip(teacher, expected):
            assert torch.allclose(got, want, atol=1e-6), iteration


def test_model_selection_keeps_the_best_validation_checkpoint(tmp_path: Path, tiny_dataset: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Scripted validation scores whose best is neither the first, the last nor the worst: model.pt
    must hold exactly the weights validated with the best score, and they must apply."""
    trainer = make_trainer(tmp_path, tiny_dataset, val_interval=2, log_interval=2)
    scores = iter([0.2, 0.9, 0.5, 0.1])
    validated: dict[int, dict[str, torch.Tensor]] = {}

    def scripted(data: list) -> float:
        assert len(data) == len(trainer.val_cases)
        validated[trainer.iteration] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        return next(scores)

    monkeypatch.setattr(trainer, "_validate", scripted)
    meta = trainer.fit()
    assert sorted(validated) == [2, 4, 6, 8]
    assert meta["selected_iteration"] == 4 and meta["selected_val_dice"] == pytest.approx(0.9)
    log = pd.read_csv(tmp_path / "out" / "train_log.csv")
    assert log["val_dice"].dropna().tolist() == pytest.approx([0.2, 0.9, 0.5, 0.1])
    weights = torch.load(tmp_path / "out" / "model.pt", weights_only=True)["weights"]
    assert any(not torch.equal(validated[4][k], validated[8][k]) for k in weights), "training moved on"
    for key, value in weights.items():
        assert torch.equal(value, validated[4][key]), key
    trained = TrainedModel.load(tmp_path / "out")
    image, _ = Dataset(tiny_dataset).load_image(Dataset(tiny_dataset).split(0)["test"][0])
    labels = trained.segment(image, torch.device("cpu"))
    assert labels.shape == image.shape[1:] and labels.dtype == np.uint8


def test_last_selection_keeps_the_final_weights_whatever_validation_says(
        tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """selection: last ignores a higher earlier score; the validations still draw the curve."""
    trainer = make_trainer(tmp_path, tiny_dataset, val_interval=2, log_interval=2, selection="last")
    scores = iter([0.2, 0.9, 0.5, 0.1])
    monkeypatch.setattr(trainer, "_validate", lambda data: next(scores))
    meta = trainer.fit()
    assert meta["selection"] == "last" and meta["selected_iteration"] == 8
    assert meta["selected_val_dice"] == pytest.approx(0.1)
    weights = torch.load(tmp_path / "out" / "model.pt", weights_only=True)["weights"]
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(weights[key], value.cpu()), key
    assert pd.read_csv(tmp_path / "out" / "train_log.csv")["val_dice"].dropna().tolist() == pytest.approx(
        [0.2, 0.9, 0.5, 0.1])


def test_training_reads_train_scribbles_and_validation_labels_only(tmp_path: Path, tiny_dataset: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Scribbles exist only for the fold's training cases and labels only for its validation cases, so
    any other read fails; the spy also demands that every training and validation case is used."""
    dataset = Dataset(tiny_dataset)
    split = dataset.split(0)
    for case in dataset.cases:
        if case not in split["train"]:
            dataset.scribble_path(case, "sim").unlink()
        if case not in split["val"]:
            dataset.label_path(case).unlink()
    read: dict[str, list[str]] = {"load_label": [], "load_scribble": []}
    for loader, reads in read.items():
        original = getattr(Dataset, loader)

        def spy(self: Dataset, case: str, *args: object, _original=original, _reads=reads) -> np.ndarray:
            _reads.append(case)
            return _original(self, case, *args)

        monkeypatch.setattr(Dataset, loader, spy)
    make_trainer(tmp_path, tiny_dataset).fit()
    assert sorted(set(read["load_scribble"])) == sorted(split["train"])
    assert sorted(set(read["load_label"])) == sorted(split["val"])


def test_segment_normalises_like_training(tmp_path: Path, tiny_dataset: Path) -> None:
    """The network sees the same normalised intensities at inference as in training and validation."""
    trainer = make_trainer(tmp_path, tiny_dataset, iterations=1)
    trainer.fit()
    case = Dataset(tiny_dataset).split(0)["test"][0]
    raw, _ = Dataset(tiny_dataset).load_image(case)
    trained_view, _ = trainer._load_image(case)
    assert not np.allclose(trained_view, raw)
    trained = TrainedModel.load(tmp_path / "out")
    seen: list[torch.Tensor] = []
    original = trained.method.logits

    def spy(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return original(model, x)

    trained.method.logits = spy  # type: ignore[method-assign]
    trained.segment(raw, torch.device("cpu"))
    assert len(seen) == 1 and seen[0].shape[0] == 1  # the fixture volume is one patch
    np.testing.assert_allclose(seen[0][0].numpy(), trained_view, atol=1e-6)


def test_patch_size_must_fit_the_network(tmp_path: Path, tiny_dataset: Path) -> None:
    with pytest.raises(InputError, match="multiples of 16"):
        make_trainer(tmp_path, tiny_dataset, patch_size=[12, 32, 32])


def test_channel_selection_trains_on_one_modality(tmp_path: Path, tiny_dataset: Path) -> None:
    trainer = make_trainer(tmp_path, tiny_dataset, card_text="channels: [1]\n", iterations=2)
    meta = trainer.fit()
    assert meta["channel_names"] == ["MR"]
    first_conv = next(trainer.model.parameters())
    assert first_conv.shape[1] == 1


def test_kfold_refuses_folds_without_a_training_case() -> None:
    from cmfnet.data.splits import check_splits, kfold_splits

    with pytest.raises(ValueError, match="too few"):
        kfold_splits(["a", "b", "c"], folds=2)
    splits = kfold_splits(["a", "b", "c"], folds=3)  # leave-one-out: one train, one val, one test
    assert not check_splits(["a", "b", "c"], splits)
    assert all(len(s["train"]) == 1 and len(s["val"]) == 1 for s in splits)


def test_atomic_writes_respect_the_umask(tmp_path: Path) -> None:
    import os

    from cmfnet.data.io import atomic_dir, write_json

    write_json({"a": 1}, tmp_path / "x.json")
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "f").write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~umask


@pytest.mark.parametrize("downsamplings,n_convs", [(3, 3), (4, (1, 2, 3, 3, 3)), (4, 5)])
def test_vnet_keeps_the_input_shape(downsamplings: int, n_convs: object) -> None:
    from cmfnet.training.networks import build_network

    model = build_network({"arch": "vnet", "width": 2, "n_convs": n_convs, "downsamplings": downsamplings},
                          in_channels=2, num_classes=3)
    side = 2 ** downsamplings
    out = model(torch.zeros(2, 2, side, 2 * side, 3 * side))
    assert out.shape == (2, 3, side, 2 * side, 3 * side)
    assert model.size_divisor == side


@pytest.mark.parametrize("arch", ["vnet", "cmfnet"])
def test_cpu_layout_changes_the_memory_layout_not_the_values(arch: str) -> None:
    """Narrow convolutions go channels-last, wide ones stay contiguous, and the outputs and
    gradients match the default layout's (this test fails when a hook alters or drops an input)."""
    from cmfnet.training.device import CHANNELS_LAST_MAX_CHANNELS, set_cpu_layout
    from cmfnet.training.networks import build_network

    torch.manual_seed(0)
    plain = build_network({"arch": arch, "width": 8, "dropout": 0.0}, in_channels=2, num_classes=2).eval()
    fast = set_cpu_layout(copy.deepcopy(plain), torch.device("cpu"))
    assert set_cpu_layout(fast, torch.device("cpu")) is fast  # a second call adds no hooks
    convs = [m for m in fast.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    assert all(len(m._forward_pre_hooks) == 1 for m in convs)
    narrow = [max(m.in_channels, m.out_channels) <= CHANNELS_LAST_MAX_CHANNELS for m in convs]
    assert any(narrow) and not all(narrow)
    for conv, is_narrow in zip(convs, narrow):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d) == is_narrow or conv.weight.shape[2:].numel() == 1
    x = torch.randn(2, 2, 16, 32, 32)
    outs = []
    for model in (plain, fast):
        model.zero_grad()
        out = model(x)
        out = torch.cat([o.flatten() for o in out.values()]) if isinstance(out, dict) else out
        out.square().mean().backward()
        outs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)
    for g_plain, g_fast in zip(outs[0][1], outs[1][1]):
        assert torch.allclose(g_plain, g_fast, atol=1e-4, rtol=1e-3)
    assert set_cpu_layout(plain, torch.device("meta")) is plain and not hasattr(plain, "_cpu_layout")


@pytest.mark.parametrize("damage", ["missing_modality", "label_out_of_range", "other_grid", "corrupt"])
def test_train_cli_rejects_bad_datasets_with_one_line(damage: str, tmp_path: Path, tiny_dataset: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from cmfnet.cli import main
    from cmfnet.data.io import read_image, write_image

    case = Dataset(tiny_dataset).split(0)["train"][0]
    image_1 = tiny_dataset / "imagesTr" / f"{case}_0001.nii.gz"
    label = tiny_dataset / "labelsTr" / f"{case}.nii.gz"
    if damage == "missing_modality":
        image_1.unlink()
        culprit = image_1
    elif damage == "label_out_of_range":
        array, geometry = read_image(label)
        array[0, 0, 0] = 7
        write_image(array, label, geometry)
        culprit = label
    elif damage == "other_grid":
        array, geometry = read_image(image_1)
        write_image(array[:, :-1], image_1, Geometry.default(array[:, :-1].shape, geometry.spacing))
        culprit = image_1
    else:
        image_1.write_bytes(image_1.read_bytes()[:200])
        culprit = image_1
    card = write_card(tmp_path, "supervision: mask\n")
    code = main(["train", "--card", str(card), "--dataset", str(tiny_dataset), "--fold", "0",
                 "--out", str(tmp_path / "out"), "--set", "train.iterations=2", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and str(culprit) in err[0]
    assert not (tmp_path / "out" / "model.pt").exists()


def test_workflow_schema_knows_every_train_option() -> None:
    """Typos in a preset's train block fail when Snakemake starts, so the schema must list them all."""
    import dataclasses

    import yaml

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow" / "schemas"
                             / "config.schema.yaml").read_text())
    train = schema["properties"]["train"]
    assert train["additionalProperties"] is False
    # the seed and the labelled fraction come from the top-level lists `seeds:` and
    # `labelled_fractions:`, one training per entry
    assert set(train["properties"]) == {f.name for f in dataclasses.fields(TrainConfig)} - {"seed", "labelled_fraction"}
    assert schema["properties"]["seeds"]["default"] == [0]


def test_ema_selection_averages_weights_and_buffers_scores_and_keeps_the_average(
        tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """selection: ema. The average copies the model at iteration 0, then follows
    decay_i = min(1 - 1/(i + 1), d) over every floating weight and buffer (BatchNorm's running
    statistics too); validation scores the average, not the raw model; model.pt holds it."""
    trainer = make_trainer(tmp_path, tiny_dataset, iterations=6, val_interval=3, log_interval=3,
                           selection="ema", ema_decay=0.7)
    snapshots: list[dict[str, torch.Tensor]] = []
    averaged: list[dict[str, torch.Tensor]] = []

    def record(context: TrainingContext, iteration: int) -> None:  # runs right after the average's update
        snapshots.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        averaged.append({k: v.detach().clone() for k, v in trainer.averaged.state_dict().items()})

    scored: list[object] = []
    real_predict = trainer.predict_probabilities

    def spy(image: np.ndarray, model: object = None, overlap: float | None = None) -> torch.Tensor:
        scored.append(model)
        return real_predict(image, model, overlap)

    monkeypatch.setattr(trainer.method, "after_step", record)
    monkeypatch.setattr(trainer, "predict_probabilities", spy)
    meta = trainer.fit()
    expected: dict[str, torch.Tensor] = {}
    for iteration, model in enumerate(snapshots):
        decay = min(1.0 - 1.0 / (iteration + 1), 0.7)
        expected = {k: decay * expected[k] + (1 - decay) * v if v.is_floating_point() else v
                    for k, v in model.items()} if expected else dict(model)
        for key, want in expected.items():
            assert torch.allclose(averaged[iteration][key].float(), want.float(), atol=1e-6), (iteration, key)
    assert any("running_mean" in k for k in expected), "the fixture network has BatchNorm"
    assert any(not torch.equal(expected[k], snapshots[-1][k]) for k in expected), "average != model"
    assert scored and all(model is trainer.averaged for model in scored)
    assert meta["selection"] == "ema" and meta["selected_iteration"] == 6
    weights = torch.load(tmp_path / "out" / "model.pt", weights_only=True)["weights"]
    for key, value in averaged[-1].items():
        assert torch.equal(weights[key], value), key
