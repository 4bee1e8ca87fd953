"""What a resume after a kill must restore beyond the weights: a best checkpoint saved before the
kill, and every global random generator a plugin may draw from. Written for the engine's mutation
survivors of 2026-12-05 (docs/testing.md): each test failed on the mutant named in its docstring."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cmfnet.training.contract import TrainingContext
from cmfnet.training.engine import Trainer
from test_engine_records import make_trainer as make_records_trainer

# 16-voxel patches in 16x32x32 volumes (random positions), a checkpoint at 4, validation every 2
SETTINGS = {"iterations": 8, "batch_size": 2, "patch_size": [16, 16, 16], "val_interval": 2,
            "checkpoint_interval": 4, "log_interval": 2}


def make_trainer(tmp_path: Path, dataset: Path, out: str, card: str = "pce.yaml") -> Trainer:
    return make_records_trainer(tmp_path, dataset, out, card, **SETTINGS)


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path / "model.pt", weights_only=True)["weights"]


def script_validation(monkeypatch: pytest.MonkeyPatch, trainer: Trainer, scores: dict[int, float]) -> None:
    """Validation scores by iteration, so a resumed run sees the same ones as an uninterrupted run."""
    monkeypatch.setattr(trainer, "_validate", lambda data: scores[trainer.iteration])


def draw_every_generator(iteration: int) -> list[tuple]:
    return [(iteration, random.random(), float(np.random.random()), float(torch.rand(1)))]


def run(monkeypatch: pytest.MonkeyPatch, trainer: Trainer, draws: list | None = None,
        kill_at: int | None = None, draw: Callable[[int], list[tuple]] = draw_every_generator) -> None:
    """Fit, with a plugin step whose ``draw`` takes numbers from the global generators (recorded in
    ``draws``; by default one each from Python's, numpy's and torch's) and, if ``kill_at``, dies
    right after that step as a kill would."""
    def step(context: TrainingContext, iteration: int) -> None:
        if draws is not None:
            draws.extend(draw(iteration))
        if iteration == kill_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer.method, "after_step", step)
    if kill_at is None:
        trainer.fit()
    else:
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()


def test_resume_keeps_the_best_checkpoint_saved_before_the_kill(tmp_path: Path, tiny_dataset: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The best validation is at iteration 2, the checkpoint at 4, the kill at 5: model.pt after the
    resume holds iteration 2's weights, as without the kill (fails when last.pt drops ``best_state``)."""
    scores = {2: 0.9, 4: 0.5, 6: 0.4, 8: 0.1}
    full = make_trainer(tmp_path, tiny_dataset, "full")
    script_validation(monkeypatch, full, scores)
    run(monkeypatch, full)
    killed = make_trainer(tmp_path, tiny_dataset, "killed")
    script_validation(monkeypatch, killed, scores)
    run(monkeypatch, killed, kill_at=5)
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["best"]["iteration"] == 2
    resumed = make_trainer(tmp_path, tiny_dataset, "killed")
    script_validation(monkeypatch, resumed, scores)
    run(monkeypatch, resumed)
    assert resumed.iteration == 8
    meta = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["meta"]
    assert meta["selected_iteration"] == 2 and meta["selected_val_dice"] == pytest.approx(0.9)
    reference, weights = weights_of(tmp_path / "full"), weights_of(tmp_path / "killed")
    assert any(not torch.equal(v, full.model.state_dict()[k]) for k, v in reference.items()), "training moved on"
    for key, value in reference.items():
        assert torch.equal(value, weights[key]), key


def test_resume_restores_every_global_random_generator(tmp_path: Path, tiny_dataset: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin that draws from random, np.random or torch's generator gets after a resume the
    numbers it would have got without the kill (fails when numpy's position or Gaussian flag is
    stored from the wrong field of ``np.random.get_state()``)."""
    uninterrupted: list = []
    run(monkeypatch, make_trainer(tmp_path, tiny_dataset, "full"), uninterrupted)
    before_kill: list = []
    run(monkeypatch, make_trainer(tmp_path, tiny_dataset, "killed"), before_kill, kill_at=5)
    after_resume: list = []
    np.random.seed(12345)  # what a resume must not depend on: the process's generators at start
    random.seed(12345)
    run(monkeypatch, make_trainer(tmp_path, tiny_dataset, "killed"), after_resume)
    assert [d[0] for d in after_resume] == [4, 5, 6, 7]
    assert after_resume == uninterrupted[4:]
    assert before_kill == uninterrupted[:6]


def test_numpy_gaussian_state_survives_a_resume(tmp_path: Path, tiny_dataset: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """np.random keeps half of a Gaussian pair between calls; a resume restores it too (fails when
    ``has_gauss`` is read from the wrong field)."""
    def gaussians(iteration: int) -> list[tuple]:  # 5 draws by the checkpoint: a half is cached
        return [(iteration, float(np.random.standard_normal())) for _ in range(2 if iteration == 0 else 1)]

    uninterrupted: list = []
    run(monkeypatch, make_trainer(tmp_path, tiny_dataset, "full"), uninterrupted, draw=gaussians)
    run(monkeypatch, make_trainer(tmp_path, tiny_dataset, "killed"), [], kill_at=4, draw=gaussians)
    resumed_draws: list = []
    run(monkeypatch, make_trainer(tmp_path, tiny_dataset, "killed"), resumed_draws, draw=gaussians)
    assert resumed_draws == uninterrupted[5:]


def test_the_mean_teacher_is_never_trained_by_gradients(tmp_path: Path, tiny_dataset: Path) -> None:
    """USTM's teacher follows the student by averaging only: no parameter of it asks for a gradient
    or receives one (fails when the frozen copy keeps ``requires_grad``)."""
    trainer = make_trainer(tmp_path, tiny_dataset, "ustm", card="ustm.yaml")
    trainer.fit()
    assert trainer.teacher is not None
    assert all(not p.requires_grad and p.grad is None for p in trainer.teacher.parameters())
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in trainer.teacher.parameters()}
