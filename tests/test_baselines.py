"""The compared baselines: what makes each method itself, on tiny networks and patches.

Loss terms are checked on hand-made batches (plugins' setup against a real ``TrainingContext``
built from hand-made volumes); S2L's and DMSPS's hooks (EMA updates, stage 2, resume after a kill)
run in the real engine on the tiny fixture dataset.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.dmsps import mixed_soft_label, stage2_labels
from baselines.regularizers import (entropy_of_probabilities, mumford_shah_loss, normalized_entropy,
                                    soft_contour_length)
from baselines.s2l import crop_grid, downsample
from baselines.ustm import masked_consistency, teacher_statistics, uncertainty_threshold
from cmfnet.training.engine import Trainer
from cmfnet.training.config import TrainConfig
from cmfnet.errors import InputError
from cmfnet.data.io import IGNORE, Geometry
from cmfnet.data.dataset import Dataset
from cmfnet.training.cards import load_card
from cmfnet.training.contract import Batch, Method, StepInfo, TrainingContext
from cmfnet.training.networks.vnet import DualDecoderVNet
from cmfnet.training.plugins import load_method
from cmfnet.training.sampling import TrainVolume
from conftest import SPACING

METHODS = Path(__file__).resolve().parents[1] / "methods"
TABLE_NAMES = {"pce": "pCE", "fullysup": "FullySup", "em": "EM", "tv": "TV", "ms": "MS",
               "ustm": "USTM", "s2l": "S2L", "dmsps": "DMSPS"}
REFERENCE_VNET = {"arch": "vnet", "width": 16, "n_convs": [1, 2, 3, 3, 3], "downsamplings": 4, "dropout": 0.5}
PATCH = (16, 16, 16)
PATCH_SPACING = (3.0, 1.25, 1.25)


def tiny_method(stem: str, *overrides: str) -> Method:
    """The card's plugin with a width-2 V-Net (the layout stays the reference's)."""
    return load_method(load_card(METHODS / f"{stem}.yaml", ["network.width=2", *overrides]))


def scribble_target(batch: int = 2, shape: tuple[int, int, int] = PATCH) -> torch.Tensor:
    target = torch.full((batch, *shape), IGNORE, dtype=torch.long)
    target[:, shape[0] // 2, shape[1] // 2, 2:10] = 1
    target[:, 1, :, 1] = 0
    return target


def make_batch(channels: int = 2, batch: int = 2, target: torch.Tensor | None = None) -> Batch:
    generator = torch.Generator().manual_seed(0)
    image = torch.randn((batch, channels, *PATCH), generator=generator)
    target = scribble_target(batch) if target is None else target
    boxes = [(slice(0, PATCH[0]), slice(0, PATCH[1]), slice(0, PATCH[2]))] * batch
    return Batch(image=image, target=target, case_ids=[f"case_{i}" for i in range(batch)], boxes=boxes,
                 spacing=[PATCH_SPACING] * batch)


def train_volume(image: np.ndarray, target: np.ndarray) -> TrainVolume:
    return TrainVolume(np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(target, dtype=np.uint8),
                       Geometry.default(target.shape, PATCH_SPACING))


def make_context(method: Method, model: nn.Module, volumes: dict[str, TrainVolume], num_classes: int,
                 max_iterations: int = 100) -> tuple[TrainingContext, SimpleNamespace]:
    """A real TrainingContext over two-channel ``volumes``, without the engine, and a record of what
    it was asked: log lines and optimiser resets."""
    record = SimpleNamespace(messages=[], optimizer_resets=[])

    def predict(case: str) -> torch.Tensor:
        """Like the engine: eval mode, no grad, training mode restored (one window: tiny volumes)."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logits = method.logits(model, torch.from_numpy(volumes[case].image)[None])
                return torch.softmax(logits, dim=1)[0].float().cpu()
        finally:
            model.train(was_training)

    def replace_target(case: str, target: np.ndarray) -> None:
        volumes[case].target = target

    context = TrainingContext(max_iterations=max_iterations, num_classes=num_classes,
                              channel_names=["CT", "MR"],
                              volumes=volumes, replace_target=replace_target, predict=predict,
                              reset_optimizer=record.optimizer_resets.append, log=record.messages.append)
    return context, record


def make_volumes(n: int = 2, channels: int = 2, shape: tuple[int, int, int] = PATCH,
                 seed: int = 0) -> dict[str, TrainVolume]:
    rng = np.random.default_rng(seed)
    return {f"case_{i}": train_volume(rng.normal(size=(channels, *shape)),
                                      scribble_target(1, shape)[0].numpy().astype(np.uint8))
            for i in range(n)}


# -- cards -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("stem", sorted(TABLE_NAMES))
def test_cards_follow_the_common_protocol(stem: str) -> None:
    card = load_card(METHODS / f"{stem}.yaml")
    method = load_method(card)
    assert card.name == TABLE_NAMES[stem]
    # FullySup is pCE's plugin on dense masks; DMSPS's dual-decoder V-Net keeps the reference layout
    assert method.name == ("pce" if stem == "fullysup" else stem)
    assert card.network == ({**REFERENCE_VNET, "arch": "vnet_dual_decoder"} if stem == "dmsps" else REFERENCE_VNET)
    assert card.channels is None, "input-level fusion: CT and MR stacked as channels"
    assert card.train == {}, "baselines train with the preset's block"
    assert card.supervision == ("mask" if stem == "fullysup" else "scribble")
    assert set(card.params) <= set(method.defaults)
    assert all(method.params[k] == v for k, v in card.params.items())


def test_bad_schedule_and_choice_params_are_refused() -> None:
    with pytest.raises(InputError, match="rampup"):
        tiny_method("em", "params.rampup=1.5")
    with pytest.raises(InputError, match="uncertain_label"):
        tiny_method("dmsps", "params.uncertain_label=maybe")
    with pytest.raises(InputError, match="ema_stride"):
        tiny_method("s2l", "params.ema_stride=[2, 2]")


# -- every plugin ----------------------------------------------------------------------------------
@pytest.mark.parametrize("stem", sorted(TABLE_NAMES))
def test_every_plugin_loss_backpropagates(stem: str) -> None:
    torch.manual_seed(0)
    method = tiny_method(stem)
    model = method.build_network(2, 3)
    batch = make_batch()
    if stem == "fullysup":
        batch.target = torch.randint(0, 3, batch.target.shape)
    if stem == "s2l":  # after the warm-up, with maps confident enough to give pseudo-labels
        volumes = {c: train_volume(batch.image[i].numpy(), batch.target[i].numpy())
                   for i, c in enumerate(batch.case_ids)}
        method.setup(make_context(method, model, volumes, 3)[0])
        for grid in method.maps.values():
            grid[2] = 0.9
    teacher = copy.deepcopy(model) if method.teacher_decay else None
    loss, parts = method.loss(model, batch, StepInfo(iteration=90, max_iterations=100, teacher=teacher))
    assert torch.isfinite(loss) and loss.dim() == 0
    assert all(isinstance(v, float) and math.isfinite(v) for v in parts.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    if teacher is not None:
        assert all(p.grad is None for p in teacher.parameters())


def test_pce_on_a_patch_without_labels_is_finite_with_zero_gradients() -> None:
    method = tiny_method("pce")
    model = method.build_network(2, 2)
    batch = make_batch(target=torch.full((2, *PATCH), IGNORE, dtype=torch.long))
    loss, _ = method.loss(model, batch, StepInfo(0, 10))
    assert torch.isfinite(loss) and float(loss.detach()) == 0.0
    loss.backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in model.parameters())


def test_pce_averages_over_scribbled_voxels_only() -> None:
    method = tiny_method("pce")
    model = method.build_network(2, 2).eval()
    batch = make_batch()
    loss, _ = method.loss(model, batch, StepInfo(0, 10))
    logits = model(batch.image)
    labelled = batch.target != IGNORE
    expected = F.cross_entropy(logits.permute(0, 2, 3, 4, 1)[labelled], batch.target[labelled])
    assert torch.allclose(loss, expected, atol=1e-6)


def test_fullysup_is_cross_entropy_on_dense_masks() -> None:
    method = tiny_method("fullysup")
    model = method.build_network(2, 3).eval()
    batch = make_batch(target=torch.randint(0, 3, (2, *PATCH)))
    loss, _ = method.loss(model, batch, StepInfo(0, 10))
    assert torch.allclose(loss, F.cross_entropy(model(batch.image), batch.target), atol=1e-6)


# -- EM --------------------------------------------------------------------------------------------
def test_entropy_is_normalised_to_unit_interval() -> None:
    for classes in (2, 5):
        uniform = torch.zeros(1, classes, 2, 2, 2)
        assert torch.allclose(normalized_entropy(uniform), torch.ones(1, 2, 2, 2), atol=1e-6)
        one_hot = torch.zeros(1, classes, 2, 2, 2)
        one_hot[:, 1] = 200.0
        assert float(normalized_entropy(one_hot).abs().max()) < 1e-6
        random = normalized_entropy(torch.randn(3, classes, 4, 4, 4) * 3)
        assert float(random.min()) >= 0.0 and float(random.max()) <= 1.0 + 1e-6


def test_em_weight_ramps_up_to_its_value() -> None:
    method = tiny_method("em")
    model = method.build_network(2, 2)
    batch = make_batch()
    weights = [method.loss(model, batch, StepInfo(t, 100))[1]["em_weight"] for t in (0, 25, 50, 99)]
    assert weights == sorted(weights)
    assert weights[0] < 0.01 * 0.1 and weights[-1] == pytest.approx(0.1)
    model.eval()
    loss, parts = method.loss(model, batch, StepInfo(99, 100))
    with torch.no_grad():
        probs = torch.softmax(model(batch.image), dim=1)
    by_hand = float((-(probs * probs.log()).sum(1) / math.log(2)).mean())
    assert parts["entropy"] == pytest.approx(by_hand, rel=1e-4)
    assert float(loss.detach()) == pytest.approx(parts["pce"] + 0.1 * by_hand, rel=1e-5)


# -- TV --------------------------------------------------------------------------------------------
def test_tv_is_zero_on_constant_and_positive_on_noisy_predictions() -> None:
    constant = torch.softmax(torch.randn(2, 3, 1, 1, 1).expand(2, 3, 8, 8, 8), dim=1)
    assert float(soft_contour_length(constant)) == pytest.approx(0.0, abs=1e-7)
    noisy = torch.softmax(torch.randn(2, 3, 8, 8, 8) * 3, dim=1)
    assert float(soft_contour_length(noisy)) > 1e-3
    cube = torch.zeros(1, 2, 8, 8, 8)
    cube[:, 1, 2:6, 2:6, 2:6] = 1.0
    cube[:, 0] = 1 - cube[:, 1]
    # erosion keeps the inner 2^3 voxels, the opening restores the 4^3 cube: a 56-voxel band
    assert float(soft_contour_length(cube)) == pytest.approx((4**3 - 2**3) / 8**3)


def test_tv_uses_every_sample_and_drops_only_the_background_channel() -> None:
    probs = torch.full((2, 2, 8, 8, 8), 0.5)
    probs[0, 1] = torch.rand(8, 8, 8)  # only sample 0 is noisy: WSL4MIS's [1:] would drop it
    probs[0, 0] = 1 - probs[0, 1]
    assert float(soft_contour_length(probs)) > 0.01
    background_only = torch.full((1, 2, 8, 8, 8), 0.5)
    background_only[0, 0] = torch.rand(8, 8, 8)
    assert float(soft_contour_length(background_only)) == 0.0
    assert float(soft_contour_length(background_only, include_background=True)) > 0.01


# -- MS --------------------------------------------------------------------------------------------
def two_region_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 2-channel piecewise-constant image, its exact two-class segmentation, and a wrong one."""
    region = torch.zeros(1, 1, 8, 8, 8)
    region[..., 4:] = 1.0
    image = torch.cat([1.0 + 2.0 * region, 3.0 - 2.5 * region], dim=1)
    aligned = torch.cat([1 - region, region], dim=1)
    shifted = torch.zeros_like(region)
    shifted[..., 2:] = 1.0
    return image, aligned, torch.cat([1 - shifted, shifted], dim=1)


def test_ms_is_zero_on_constant_and_positive_on_noisy_predictions() -> None:
    image = torch.full((2, 2, 8, 8, 8), 0.7)
    constant = torch.softmax(torch.randn(2, 3, 1, 1, 1).expand(2, 3, 8, 8, 8), dim=1)
    assert float(mumford_shah_loss(image, constant)) == pytest.approx(0.0, abs=1e-7)
    noisy = torch.softmax(torch.randn(2, 3, 8, 8, 8) * 3, dim=1)
    assert float(mumford_shah_loss(image, noisy)) > 0.01


def test_ms_takes_image_then_prediction() -> None:
    image, aligned, shifted = two_region_case()
    exact = float(mumford_shah_loss(image, aligned, beta=0.0))
    assert exact == pytest.approx(0.0, abs=1e-6)
    assert float(mumford_shah_loss(image, shifted, beta=0.0)) > 0.1
    # The WSL4MIS/PA-Seg order (prediction, image) no longer rewards the exact segmentation.
    assert float(mumford_shah_loss(aligned, image, beta=0.0)) > 0.1


class FixedLogits(nn.Module):
    """A "network" that predicts given logits whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.fixed = nn.Parameter(logits)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fixed.expand(image.shape[0], *self.fixed.shape[1:])


def test_ms_plugin_scores_its_prediction_on_the_input_image() -> None:
    image, aligned, shifted = two_region_case()
    method = tiny_method("ms", "params.beta=0.0")
    batch = Batch(image=image, target=torch.full((1, 8, 8, 8), IGNORE), case_ids=["a"],
                  boxes=[(slice(0, 8),) * 3], spacing=[PATCH_SPACING])
    _, exact = method.loss(FixedLogits(40.0 * aligned), batch, StepInfo(0, 10))
    _, wrong = method.loss(FixedLogits(40.0 * shifted), batch, StepInfo(0, 10))
    assert exact["ms"] == pytest.approx(0.0, abs=1e-6)
    assert wrong["ms"] > 0.1


def test_ms_centroids_span_the_patch_and_the_length_term_includes_z() -> None:
    slices = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(1, 1, 8, 8, 8)  # constant within each slice
    constant = torch.full((1, 2, 8, 8, 8), 0.5)
    assert float(mumford_shah_loss(slices, constant, beta=0.0)) > 1.0  # per-slice centroids would give 0
    along_z = torch.zeros(1, 2, 8, 8, 8)
    along_z[:, 1, 4:] = 1.0
    along_z[:, 0] = 1 - along_z[:, 1]
    assert float(mumford_shah_loss(torch.zeros(1, 1, 8, 8, 8), along_z, beta=1.0)) > 0.0


# -- USTM ------------------------------------------------------------------------------------------
def test_ustm_threshold_and_mask_grow_monotonically() -> None:
    thresholds = [uncertainty_threshold(t, 100, 4) for t in range(0, 120, 5)]
    assert thresholds == sorted(thresholds)
    assert thresholds[0] == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(4))
    assert thresholds[-1] == pytest.approx(math.log(4))
    uncertainty = torch.rand(1, 1, 8, 8, 8) * math.log(4)
    masks = [uncertainty < th for th in thresholds]
    for smaller, larger in zip(masks, masks[1:]):
        assert bool((smaller <= larger).all())
    assert int(masks[-1].sum()) > int(masks[0].sum())


def test_ustm_consistency_compares_matching_orientations() -> None:
    torch.manual_seed(0)
    equivariant = nn.Conv3d(2, 3, kernel_size=1)  # commutes with rot90 in (y, x)
    image = torch.randn(2, 2, 4, 8, 8)
    with torch.no_grad():
        student_logits = equivariant(image)
    for k in range(4):
        target, uncertainty = teacher_statistics(equivariant, image, k, passes=3, noise_std=0.0, noise_clip=0.2)
        mask = (uncertainty < math.log(3)).float()
        assert float(mask.sum()) > 0
        assert float(masked_consistency(student_logits, k, target, mask)) == pytest.approx(0.0, abs=1e-10)
    # Comparing the un-rotated student with the rotated teacher is not zero on this input.
    target, _ = teacher_statistics(equivariant, image, 1, passes=1, noise_std=0.0, noise_clip=0.2)
    assert float(masked_consistency(student_logits, 0, target, torch.ones_like(target[:, :1]))) > 1e-4


def test_ustm_plugin_gives_zero_consistency_for_an_equivariant_model(monkeypatch: pytest.MonkeyPatch) -> None:
    method = tiny_method("ustm", "params.noise_std=0.0")
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv3d(2, 2, kernel_size=1))
    batch = make_batch()
    for k in range(4):
        monkeypatch.setattr(method, "draw_rotation", lambda k=k: k)
        _, parts = method.loss(model, batch, StepInfo(99, 100, teacher=copy.deepcopy(model)))
        assert parts["mask_fraction"] > 0
        assert parts["consistency"] == pytest.approx(0.0, abs=1e-10)
    not_equivariant = nn.Conv3d(2, 2, kernel_size=3, padding=1)
    monkeypatch.setattr(method, "draw_rotation", lambda: 1)
    _, parts = method.loss(not_equivariant, batch, StepInfo(99, 100, teacher=copy.deepcopy(not_equivariant)))
    assert parts["consistency"] > 1e-6


def test_ustm_uncertainty_comes_from_stochastic_teacher_passes() -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv3d(2, 4, kernel_size=1), nn.Dropout3d(0.5), nn.Conv3d(4, 2, kernel_size=1))
    teacher.train()
    image = torch.randn(1, 2, 2, 4, 4)
    target, uncertainty = teacher_statistics(teacher, image, 0, passes=8, noise_std=0.1, noise_clip=0.2)
    single = entropy_of_probabilities(target).unsqueeze(1)
    # Averaging disagreeing passes raises the entropy (concavity), everywhere at least a bit.
    assert float((uncertainty - single).mean()) > 0
    assert tiny_method("ustm").teacher_decay == 0.99
    with pytest.raises(RuntimeError, match="teacher"):
        tiny_method("ustm").loss(teacher, make_batch(), StepInfo(0, 10))


# -- S2L -------------------------------------------------------------------------------------------
def s2l_with_maps(stride: int = 1, classes: int = 3, *overrides: str):
    method = tiny_method("s2l", f"params.ema_stride={stride}", *overrides)
    model = method.build_network(2, classes)
    context, record = make_context(method, model, make_volumes(2), classes)
    method.setup(context)
    assert len(record.messages) == 1 and "S2L" in record.messages[0]
    return method, model, context


def test_s2l_pseudo_labels_only_after_warmup() -> None:
    method, model, _ = s2l_with_maps()
    for grid in method.maps.values():
        grid[1] = 0.95
    batch = make_batch()
    warmup = 10  # params.warmup 0.1 of 100 iterations
    assert method.loss(model, batch, StepInfo(warmup - 1, 100))[1]["pseudo_fraction"] == 0.0
    assert method.loss(model, batch, StepInfo(warmup, 100))[1]["pseudo_fraction"] > 0.5


def test_s2l_pseudo_labels_above_threshold_never_overwrite_scribbles() -> None:
    method, _, _ = s2l_with_maps()
    generator = torch.Generator().manual_seed(0)
    for case, grid in method.maps.items():
        grid.copy_(torch.softmax(torch.randn(grid.shape, generator=generator) * 3, dim=0).half())
    batch = make_batch()
    pseudo = method.pseudo_labels(batch)
    for i, case in enumerate(batch.case_ids):
        average = method.maps[case].float()
        confidence, label = average.max(dim=0)
        unscribbled = batch.target[i] == IGNORE
        expected = (confidence > 0.8) & unscribbled
        assert 0 < int(expected.sum()) < int(unscribbled.sum())
        assert torch.equal(pseudo[i] != IGNORE, expected)
        assert torch.equal(pseudo[i][expected], label[expected])
        assert bool((pseudo[i][~unscribbled] == IGNORE).all())


def test_s2l_coarse_maps_are_cropped_with_the_batch_boxes() -> None:
    shape = (6, 10, 10)
    full = torch.rand(2, *shape)
    assert torch.allclose(downsample(torch.full((2, *shape), 0.3), (2, 4, 4)), torch.full((2, 3, 3, 3), 0.3))
    coarse = full[:, ::2, ::2, ::2]
    box = (slice(1, 5), slice(3, 9), slice(0, 10))
    crop = crop_grid(coarse, box, shape, (2, 2, 2))
    z, y, x = (np.arange(*sl.indices(n)) // 2 for sl, n in zip(box, shape))
    assert crop.shape == (2, 4, 6, 10)
    assert torch.equal(crop, coarse[:, z][:, :, y][:, :, :, x])


def engine_trainer(tmp_path: Path, dataset: Path, stem: str, *overrides: str, out: str = "out",
                   iterations: int = 8) -> Trainer:
    """The real engine on the tiny fixture dataset: width-2 network, one patch per volume."""
    card = load_card(METHODS / f"{stem}.yaml", ["network.width=2", *overrides])
    config = TrainConfig(iterations=iterations, batch_size=1, patch_size=[16, 32, 32], val_interval=0,
                         checkpoint_interval=4, log_interval=4)
    return Trainer(card, Dataset(dataset), 0, tmp_path / out, config, device="cpu")


def fit_killed_after(trainer: Trainer, iteration: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the plugin's hook, then die as a kill would, right after ``iteration``."""
    hook = trainer.method.after_step

    def hook_then_die(context: TrainingContext, it: int) -> None:
        hook(context, it)
        if it == iteration:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer.method, "after_step", hook_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


def test_plugin_hooks_receive_a_training_context_not_the_engine(tmp_path: Path, tiny_dataset: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """setup and after_step get the run's TrainingContext, never the Trainer; it shows the engine's
    training volumes read-only, and each batch carries its case's spacing from the image header."""
    trainer = engine_trainer(tmp_path, tiny_dataset, "pce", iterations=3)
    method = trainer.method
    calls: list[tuple[str, object, int | None]] = []
    spacings: list[list[tuple[float, float, float]]] = []
    setup, after_step, loss = method.setup, method.after_step, method.loss

    def recorded_setup(context: TrainingContext) -> None:
        calls.append(("setup", context, None))
        setup(context)

    def recorded_after_step(context: TrainingContext, iteration: int) -> None:
        calls.append(("after_step", context, iteration))
        after_step(context, iteration)

    def recorded_loss(model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        spacings.append(list(batch.spacing))
        return loss(model, batch, step)

    monkeypatch.setattr(method, "setup", recorded_setup)
    monkeypatch.setattr(method, "after_step", recorded_after_step)
    monkeypatch.setattr(method, "loss", recorded_loss)
    trainer.fit()
    assert [(hook, it) for hook, _, it in calls] == [("setup", None), ("after_step", 0), ("after_step", 1),
                                                     ("after_step", 2)]
    for _, context, _ in calls:
        assert type(context) is TrainingContext and not isinstance(context, Trainer)
        assert not any(hasattr(context, name) for name in ("model", "optimizer", "volumes", "sampler",
                                                            "method", "teacher", "config", "dataset"))
    context = calls[0][1]
    assert isinstance(context, TrainingContext)
    assert (context.max_iterations, context.num_classes, context.channel_names) == (3, 2, ["CT", "MR"])
    assert context.cases == trainer.train_cases
    for case in context.cases:
        image, target = context.image(case), context.target(case)
        assert np.array_equal(image, trainer.volumes[case].image)
        assert np.array_equal(target, trainer.volumes[case].target)
        assert not image.flags.writeable and not target.flags.writeable
        with pytest.raises(ValueError):
            target[0, 0, 0] = 1
    assert spacings == [[SPACING]] * 3, "batch_size 1: one spacing per patch, from its case's header"


def test_s2l_in_the_engine_averages_eval_mode_predictions_every_period(tmp_path: Path, tiny_dataset: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """w <- a p + (1 - a) w every period, p the engine's eval-mode prediction of each training volume;
    training mode and BatchNorm statistics are left as they were."""
    trainer = engine_trainer(tmp_path, tiny_dataset, "s2l", "params.period=2", "params.ema_stride=1")
    method, model = trainer.method, trainer.model
    predictions: dict[str, list[torch.Tensor]] = {}
    predict = trainer.predict_probabilities

    def recorded(image: np.ndarray, model: nn.Module | None = None, overlap: float | None = None) -> torch.Tensor:
        probs = predict(image, model, overlap)
        for case in (c for c, v in trainer.volumes.items() if v.image is image):  # not validation
            predictions.setdefault(case, []).append(probs)
        return probs

    monkeypatch.setattr(trainer, "predict_probabilities", recorded)
    hook, modes, update_iterations = method.after_step, [], []

    def checked(context: TrainingContext, iteration: int) -> None:
        statistics = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
        handle = model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
        updates = method.updates
        hook(context, iteration)
        handle.remove()
        if method.updates != updates:
            update_iterations.append(iteration)
        assert model.training, "training mode is restored"
        assert all(torch.equal(model.state_dict()[k], v) for k, v in statistics.items())

    monkeypatch.setattr(method, "after_step", checked)
    trainer.fit()
    assert update_iterations == [1, 3, 5, 7] and method.updates == 4 and modes and not any(modes)
    alpha = method.params["alpha"]
    assert sorted(predictions) == sorted(trainer.train_cases)
    for case, probs in predictions.items():
        assert len(probs) == 4 and not torch.equal(probs[0], probs[-1])  # the model changed in between
        expected = torch.zeros_like(probs[0])
        for p in probs:
            expected = alpha * p + (1 - alpha) * expected
        assert torch.allclose(method.maps[case].float(), expected, atol=2e-3)  # float16 maps


def test_s2l_maps_survive_a_kill_and_resume_in_the_engine(tmp_path: Path, tiny_dataset: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = ("params.period=2", "params.ema_stride=2")
    full = engine_trainer(tmp_path, tiny_dataset, "s2l", *overrides, out="full")
    full.fit()
    fit_killed_after(engine_trainer(tmp_path, tiny_dataset, "s2l", *overrides, out="killed"), 5, monkeypatch)
    resumed = engine_trainer(tmp_path, tiny_dataset, "s2l", *overrides, out="killed")
    updates: list[int] = []
    hook = resumed.method.after_step
    monkeypatch.setattr(resumed.method, "after_step", lambda context, it: (updates.append(it), hook(context, it)))
    resumed.fit()
    assert updates == [4, 5, 6, 7], "the resume starts after the last checkpoint (iteration 4)"
    assert resumed.method.updates == full.method.updates == 4
    assert sorted(resumed.method.maps) == sorted(full.method.maps)
    for case, grid in full.method.maps.items():
        assert torch.equal(resumed.method.maps[case], grid), case


# -- DMSPS -----------------------------------------------------------------------------------------
def test_dmsps_mixed_label_lies_between_the_two_decoders() -> None:
    p1 = torch.softmax(torch.randn(2, 3, 4, 4, 4, requires_grad=True), dim=1)
    p2 = torch.softmax(torch.randn(2, 3, 4, 4, 4), dim=1)
    for alpha in (0.0, 0.3, 1.0):
        q = mixed_soft_label(p1, p2, alpha)
        assert not q.requires_grad
        assert bool((q >= torch.minimum(p1, p2) - 1e-7).all() and (q <= torch.maximum(p1, p2) + 1e-7).all())
        assert torch.allclose(q.sum(dim=1), torch.ones(2, 4, 4, 4))


def test_dmsps_network_and_loss_follow_the_reference_form() -> None:
    torch.manual_seed(0)
    method = tiny_method("dmsps")
    model = method.build_network(2, 3)
    assert isinstance(model, DualDecoderVNet) and model.size_divisor == 16
    assert model.encoder.widths[0] == 2 and len(model.encoder.widths) == 5
    assert model.feature_dropout.p == 0.5, "DMSPS's Dropout(0.5) on the auxiliary decoder's features"
    assert tiny_method("dmsps", "network.aux_feature_dropout=0.2").build_network(2, 3).feature_dropout.p == 0.2
    with pytest.raises(InputError, match="unknown params.*aux_feature_dropout"):
        tiny_method("dmsps", "params.aux_feature_dropout=0.2")  # a network option now, not a param
    model.eval()  # deterministic decoders, to recompute the loss by hand
    batch = make_batch()
    assert torch.equal(method.logits(model, batch.image), model.both(batch.image)[0])
    loss, parts = method.loss(model, batch, StepInfo(0, 100))
    with torch.no_grad():
        main, aux = model.both(batch.image)
    p_main, p_aux = torch.softmax(main, 1), torch.softmax(aux, 1)
    q = parts["alpha"] * p_main + (1 - parts["alpha"]) * p_aux
    double_softmax_ce = 0.5 * sum(-(q * F.log_softmax(p, 1)).sum(1).mean() for p in (p_main, p_aux))
    assert parts["mixed_ce"] == pytest.approx(float(double_softmax_ce), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(parts["pce"] + 8.0 * parts["mixed_ce"], rel=1e-5)


def stage2_case() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Mean-softmax maps with a large and a small confident class-1 blob, an uncertain slab, and scribbles."""
    shape = (4, 12, 12)
    logits = torch.zeros(3, *shape)
    logits[0] = 8.0                      # confident background everywhere ...
    logits[:, :, 2:6, 2:6] = torch.tensor([0.0, 8.0, 0.0]).view(3, 1, 1, 1)   # large class-1 blob
    logits[:, :, 9:11, 9:11] = torch.tensor([0.0, 8.0, 0.0]).view(3, 1, 1, 1)  # small class-1 blob
    logits[:, :, :, 7] = 0.0             # ... except an uncertain slab (uniform)
    probs = torch.softmax(logits, dim=0)
    uncertainty = (entropy_of_probabilities(probs, dim=0) / math.log(3)).numpy()
    scribble = np.full(shape, IGNORE, np.uint8)
    scribble[1, 3, 7] = 2                # on an uncertain voxel
    scribble[1, 3, 3] = 0                # contradicting the prediction
    return probs, scribble, uncertainty


@pytest.mark.parametrize("uncertain_label", ["background", "ignore"])
def test_dmsps_stage2_keeps_scribbles_and_only_low_uncertainty_voxels(uncertain_label: str) -> None:
    probs, scribble, uncertainty = stage2_case()
    labels = stage2_labels(probs, scribble, 0.3, uncertain_label)
    scribbled = scribble != IGNORE
    assert np.array_equal(labels[scribbled], scribble[scribbled])
    foreground = (labels > 0) & (labels != IGNORE) & ~scribbled
    assert foreground.any() and (uncertainty[foreground] < 0.3).all()
    assert (labels[:, 9:11, 9:11] != 1).all(), "only the largest component of a class is kept"
    assert (labels[:, 2:6, 2:6][~scribbled[:, 2:6, 2:6]] == 1).all()
    uncertain = (uncertainty >= 0.3) & ~scribbled
    assert uncertain.any()
    assert (labels[uncertain] == (0 if uncertain_label == "background" else IGNORE)).all()
    if uncertain_label == "ignore":
        assert (uncertainty[(labels != IGNORE) & ~scribbled] < 0.3).all()
        assert (labels[:, 9:11, 9:11] == IGNORE).all()


def test_dmsps_in_the_engine_switches_to_stage2_once_and_trains_on_its_labels(
        tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 2 at stage1_fraction: labels from both decoders in eval mode (the engine's sliding
    window), scribbles kept, the optimiser restarted once, and the sampler's patches use the labels."""
    trainer = engine_trainer(tmp_path, tiny_dataset, "dmsps", "params.uncertainty_threshold=1.01")
    method, model = trainer.method, trainer.model
    scribbles: dict[str, np.ndarray] = {}  # the volumes are loaded by fit()
    expected: dict[str, np.ndarray] = {}
    start = method.start_stage2

    def start_checked(context: TrainingContext) -> None:
        assert isinstance(context, TrainingContext)
        scribbles.update({c: v.target.copy() for c, v in trainer.volumes.items()})  # the engine's targets
        state = copy.deepcopy(model.state_dict())
        start(context)
        reference = copy.deepcopy(model)
        reference.load_state_dict(state)
        reference.eval()
        for case, volume in trainer.volumes.items():
            with torch.no_grad():
                main, aux = reference.both(torch.from_numpy(volume.image)[None])
            mean = 0.5 * (torch.softmax(main, 1) + torch.softmax(aux, 1))[0]
            expected[case] = stage2_labels(mean, scribbles[case], 1.01, "background")

    resets: list[int] = []
    reset = trainer.reset_optimizer
    monkeypatch.setattr(trainer, "reset_optimizer", lambda lr=None: (resets.append(trainer.iteration), reset(lr)))
    monkeypatch.setattr(method, "start_stage2", start_checked)
    targets: list[tuple[int, torch.Tensor]] = []
    loss = method.loss

    def recorded_loss(model: nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        targets.append((step.iteration, batch.target))
        return loss(model, batch, step)

    monkeypatch.setattr(method, "loss", recorded_loss)
    trainer.fit()
    assert method.stage == 2 and resets == [3]  # stage1_fraction 0.5 of 8 iterations
    assert sorted(expected) == sorted(trainer.train_cases)
    for case, volume in trainer.volumes.items():
        scribbled = scribbles[case] != IGNORE
        assert np.array_equal(volume.target[scribbled], scribbles[case][scribbled])
        assert np.array_equal(volume.target, expected[case]), case
        assert np.array_equal(method.labels[case], expected[case])
    assert all((t == IGNORE).any() for it, t in targets if it <= 3), "stage 1 trains on scribbles"
    assert all(not (t == IGNORE).any() for it, t in targets if it > 3), "stage 2 on dense pseudo-labels"


def test_dmsps_resumed_in_stage2_keeps_its_labels_and_does_not_restart_it(
        tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = ("params.uncertainty_threshold=1.01",)
    killed = engine_trainer(tmp_path, tiny_dataset, "dmsps", *overrides, out="killed")
    fit_killed_after(killed, 5, monkeypatch)  # stage 2 began after iteration 3, checkpoint at 4
    assert killed.method.stage == 2
    labels = {c: v.target.copy() for c, v in killed.volumes.items()}
    resumed = engine_trainer(tmp_path, tiny_dataset, "dmsps", *overrides, out="killed")
    starts: list[int] = []
    start = resumed.method.start_stage2
    monkeypatch.setattr(resumed.method, "start_stage2",
                        lambda context: (starts.append(resumed.iteration), start(context)))
    seen: list[dict[str, np.ndarray]] = []
    hook = resumed.method.after_step

    def first_step(context: TrainingContext, iteration: int) -> None:
        if not seen:
            seen.append({c: v.target.copy() for c, v in resumed.volumes.items()})  # what the engine trains on
        hook(context, iteration)

    monkeypatch.setattr(resumed.method, "after_step", first_step)
    resumed.fit()
    assert not starts and resumed.method.stage == 2
    assert resumed.lr_origin == 3, "stage 2's schedule origin is restored"
    for case, target in labels.items():
        assert np.array_equal(seen[0][case], target), "the first resumed step trains on stage-2 labels"
        assert np.array_equal(resumed.volumes[case].target, target)
