"""The training engine: sampling, resume after a kill, EMA teacher, selection, data hygiene."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from cmfnet.engine import PatchSampler, TrainConfig, TrainedModel, Trainer, TrainVolume
from cmfnet.errors import InputError
from cmfnet.io import IGNORE, Dataset, Geometry
from cmfnet.losses import partial_ce
from cmfnet.cards import load_card

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
    def die(trainer: Trainer, it: int) -> None:
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


def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path, tiny_dataset: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    full = make_trainer(tmp_path, tiny_dataset, "full", **AFTER_KILL)
    full.fit()
    reference = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["weights"]

    kill_after(monkeypatch, make_trainer(tmp_path, tiny_dataset, "killed", **AFTER_KILL), 5)
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["iteration"] == 4
    assert not (tmp_path / "killed" / "model.pt").exists()

    resumed = make_trainer(tmp_path, tiny_dataset, "killed", **AFTER_KILL)
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


def test_teacher_is_an_ema_of_the_student(tmp_path: Path, tiny_dataset: Path) -> None:
    trainer = make_trainer(tmp_path, tiny_dataset, iterations=3)
    trainer.method.teacher_decay = 0.5  # instance override: the plugin class stays pCE
    trainer.teacher = copy.deepcopy(trainer.model)
    before = [p.detach().clone() for p in trainer.teacher.parameters()]
    trainer.iteration = 10  # past warm-up: decay = min(1 - 1/11, 0.5) = 0.5
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)
    trainer._update_teacher()
    for t, old, s in zip(trainer.teacher.parameters(), before, trainer.model.parameters()):
        assert torch.allclose(t, 0.5 * old + 0.5 * s)


def test_model_selection_uses_validation_and_model_applies(tmp_path: Path, tiny_dataset: Path) -> None:
    trainer = make_trainer(tmp_path, tiny_dataset)
    meta = trainer.fit()
    assert meta["selected_iteration"] in (4, 8)
    assert 0.0 <= meta["best_val_dice"] <= 1.0
    log = (tmp_path / "out" / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("iteration") and "val_dice" in log[0]
    trained = TrainedModel.load(tmp_path / "out")
    image, _ = Dataset(tiny_dataset).load_image(Dataset(tiny_dataset).split(0)["test"][0])
    labels = trained.segment(image, torch.device("cpu"))
    assert labels.shape == image.shape[1:] and labels.dtype == np.uint8


def test_training_never_reads_test_labels_or_test_scribbles(tmp_path: Path, tiny_dataset: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = Dataset(tiny_dataset)
    split = dataset.split(0)
    read: list[str] = []
    for loader in ("load_label", "load_scribble"):
        original = getattr(Dataset, loader)

        def spy(self: Dataset, case: str, *args: object, _original=original) -> np.ndarray:
            read.append(case)
            return _original(self, case, *args)

        monkeypatch.setattr(Dataset, loader, spy)
    make_trainer(tmp_path, tiny_dataset).fit()
    assert read and not set(read) & set(split["test"])
    assert set(read) <= set(split["train"]) | set(split["val"])


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
    from cmfnet.splits import check_splits, kfold_splits

    with pytest.raises(ValueError, match="too few"):
        kfold_splits(["a", "b", "c"], folds=2)
    splits = kfold_splits(["a", "b", "c"], folds=3)  # leave-one-out: one train, one val, one test
    assert not check_splits(["a", "b", "c"], splits)
    assert all(len(s["train"]) == 1 and len(s["val"]) == 1 for s in splits)


def test_atomic_writes_respect_the_umask(tmp_path: Path) -> None:
    import os

    from cmfnet.io import atomic_dir, write_json

    write_json({"a": 1}, tmp_path / "x.json")
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "f").write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~umask


@pytest.mark.parametrize("downsamplings,n_convs", [(3, 3), (4, (1, 2, 3, 3, 3)), (4, 5)])
def test_vnet_keeps_the_input_shape(downsamplings: int, n_convs: object) -> None:
    from cmfnet.networks import build_network

    model = build_network({"arch": "vnet", "width": 2, "n_convs": n_convs, "downsamplings": downsamplings},
                          in_channels=2, num_classes=3)
    side = 2 ** downsamplings
    out = model(torch.zeros(2, 2, side, 2 * side, 3 * side))
    assert out.shape == (2, 3, side, 2 * side, 3 * side)
    assert model.size_divisor == side


@pytest.mark.parametrize("damage", ["missing_modality", "label_out_of_range", "other_grid", "corrupt"])
def test_train_cli_rejects_bad_datasets_with_one_line(damage: str, tmp_path: Path, tiny_dataset: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from cmfnet.cli import main
    from cmfnet.io import read_image, write_image

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
    assert set(train["properties"]) == {f.name for f in dataclasses.fields(TrainConfig)}
