"""The semi-supervised regime (supervision: semi): labelled subsets, mixed batches, and no mask of an
unlabelled case ever read by training."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.sup_only import SupervisedOnly
from cmfnet.data.dataset import Dataset
from cmfnet.data.io import IGNORE, Geometry
from cmfnet.data.splits import labelled_subset
from cmfnet.errors import InputError
from cmfnet.training.cards import load_card
from cmfnet.training.config import SEMI_KEYS, TrainConfig
from cmfnet.training.contract import Batch, StepInfo
from cmfnet.training.engine import Trainer
from cmfnet.training.sampling import SemiPatchSampler, TrainVolume

REPO = Path(__file__).resolve().parents[1]
CARDS = ["semi_suponly", "semi_meanteacher", "semi_uamt", "semi_cps", "semi_xmodal_cps", "semi_smms"]
# the tiny fixture's fold 0 trains on 4 cases: half of them labelled, batches of 2 + 2
SEMI = {"iterations": 3, "batch_size": 4, "patch_size": [16, 32, 32], "val_interval": 0,
        "checkpoint_interval": 100, "log_interval": 1, "labelled_fraction": 0.5}


def semi_card(name: str, *overrides: str):
    return load_card(REPO / "methods" / f"{name}.yaml", ["network.width=2", *overrides])


def test_labelled_subset_is_seeded_nested_and_never_empty() -> None:
    cases = [f"c{i:02d}" for i in range(18)]
    ten, twenty = labelled_subset(cases, 0.1, 0), labelled_subset(cases, 0.2, 0)
    assert (len(ten), len(twenty)) == (2, 4)  # round(1.8), round(3.6)
    assert ten == labelled_subset(list(reversed(cases)), 0.1, 0)  # the order given does not matter
    assert set(ten) <= set(twenty)  # one seed: a smaller fraction's cases lie inside a larger one's
    assert {tuple(labelled_subset(cases, 0.2, seed)) for seed in range(5)} != {tuple(twenty)}
    assert len(labelled_subset(cases[:5], 0.01, 0)) == 1  # at least one labelled case
    with pytest.raises(ValueError, match="leaves no unlabelled case"):
        labelled_subset(cases[:2], 0.9, 0)


def test_semi_sampler_puts_labelled_patches_first_and_unlabelled_targets_are_all_ignore() -> None:
    shape = (16, 24, 24)
    volumes = {}
    for case in ("a", "b", "u", "v"):
        target = np.full(shape, IGNORE, np.uint8)
        if case in ("a", "b"):
            target[:] = 0
            target[8, 12, 12] = 1
        volumes[case] = TrainVolume(np.zeros((1, *shape), np.float32), target, Geometry.default(shape, (1, 1, 1)))
    sampler = SemiPatchSampler(volumes, [8, 16, 16], 0.5, np.random.default_rng(0), ["a", "b"], ["u", "v"], 1)
    seen = set()
    for _ in range(30):
        images, targets, case_ids, boxes = sampler.sample(3)
        assert images.shape == (3, 1, 8, 16, 16) and targets.shape == (3, 8, 16, 16) and len(boxes) == 3
        assert case_ids[0] in ("a", "b") and set(case_ids[1:]) <= {"u", "v"}
        assert (targets[1:] == IGNORE).all() and (targets[0] != IGNORE).all()
        seen.update(case_ids[1:])
    assert seen == {"u", "v"}


def test_engine_batches_carry_the_configured_ratio(tmp_path: Path, tiny_dataset: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """1 labelled + 2 unlabelled patches per batch, flagged by Batch.labelled, each from a case of its kind."""
    card = semi_card("semi_suponly")
    trainer = Trainer(card, Dataset(tiny_dataset), 0, tmp_path / "out",
                      TrainConfig(**{**SEMI, "batch_size": 3, "labelled_batch_size": 1}), device="cpu")
    seen: list[Batch] = []
    real_loss = trainer.method.loss

    def spy(model: torch.nn.Module, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, float]]:
        seen.append(batch)
        return real_loss(model, batch, step)

    monkeypatch.setattr(trainer.method, "loss", spy)
    meta = trainer.fit()
    labelled = set(meta["labelled_cases"])
    assert len(labelled) == 2 and labelled < set(meta["train_cases"])
    assert len(seen) == SEMI["iterations"]
    for batch in seen:
        assert batch.labelled.tolist() == [True, False, False]
        assert [case in labelled for case in batch.case_ids] == [True, False, False]
        assert (batch.target[1:] == IGNORE).all()


@pytest.mark.parametrize("name", CARDS)
def test_each_semi_card_trains_without_reading_an_unlabelled_mask(name: str, tmp_path: Path, tiny_dataset: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The unlabelled cases' label files are garbage, and every label read is recorded: training
    completes, and reads the masks of the labelled and validation cases only."""
    dataset = Dataset(tiny_dataset)
    split = dataset.split(0)
    labelled = labelled_subset(split["train"], SEMI["labelled_fraction"], 0)
    for case in split["train"]:
        if case not in labelled:
            dataset.label_path(case).write_bytes(b"not a NIfTI file")
    read: list[str] = []
    real_load = Dataset.load_label

    def spy(self: Dataset, case: str) -> np.ndarray:
        read.append(case)
        return real_load(self, case)

    monkeypatch.setattr(Dataset, "load_label", spy)
    meta = Trainer(semi_card(name), dataset, 0, tmp_path / "out", TrainConfig(**SEMI), device="cpu").fit()
    assert meta["labelled_cases"] == labelled and (tmp_path / "out" / "model.pt").is_file()
    assert sorted(set(read)) == sorted(labelled + split["val"])


def test_semi_settings_enter_the_hash_only_when_set() -> None:
    """Scribble and mask models keep the hashes they had before the regime existed."""
    every = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(TrainConfig().settings()) == every - set(SEMI_KEYS)
    assert set(TrainConfig(labelled_fraction=0.1).settings()) == every


def test_semi_refuses_what_cannot_make_a_mixed_batch(tmp_path: Path, tiny_dataset: Path) -> None:
    card = semi_card("semi_suponly")
    for train, problem in (({"labelled_fraction": None}, "needs train.labelled_fraction"),
                           ({"labelled_batch_size": 4}, "needs labelled and unlabelled patches"),
                           ({"labelled_fraction": 0.9}, "leaves no unlabelled case")):
        with pytest.raises(InputError, match=problem):
            Trainer(card, Dataset(tiny_dataset), 0, tmp_path / "out", TrainConfig(**{**SEMI, **train}), device="cpu")
    with pytest.raises(InputError, match="supervision must be"):
        load_card(REPO / "methods" / "semi_suponly.yaml", ["supervision=semis"])


def test_supervised_only_never_feeds_an_unlabelled_patch_to_the_network() -> None:
    fed: list[torch.Tensor] = []

    def network(image: torch.Tensor) -> torch.Tensor:
        fed.append(image)
        return torch.zeros(image.shape[0], 2, *image.shape[2:], requires_grad=True)

    image = torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 1, 2, 2, 2)
    target = torch.full((4, 2, 2, 2), IGNORE)
    target[:2] = 1
    batch = Batch(image, target, ["a", "b", "u", "v"], [], [], torch.tensor([True, True, False, False]))
    loss, _ = SupervisedOnly(semi_card("semi_suponly")).loss(network, batch, StepInfo(0, 1))
    assert fed[0][:, 0, 0, 0, 0].tolist() == [0.0, 1.0]
    assert loss.item() == pytest.approx(np.log(2))


def test_mean_teacher_consistency_vanishes_when_teacher_and_student_agree() -> None:
    """Without input noise, a teacher equal to the student gives zero consistency on every patch;
    the cross-entropy is that of the labelled patches only."""
    from baselines.mean_teacher import MeanTeacher

    method = MeanTeacher(semi_card("semi_meanteacher", "params.noise_std=0.0"))
    model = method.build_network(2, 2).eval()
    image = torch.randn(2, 2, 16, 16, 16)
    target = torch.zeros(2, 16, 16, 16, dtype=torch.long)
    target[1] = IGNORE
    batch = Batch(image, target, ["a", "u"], [], [], torch.tensor([True, False]))
    loss, parts = method.loss(model, batch, StepInfo(9, 10, teacher=model))
    assert parts["consistency"] == pytest.approx(0.0, abs=1e-12) and parts["consistency_weight"] > 0
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(image[:1]), target[:1])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# -- the peers: UA-MT, CPS, X-modal CPS ----------------------------------------------------------------


def test_ua_mt_masks_uncertain_voxels_and_is_mean_teacher_when_nothing_is_uncertain(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Threshold 0: no voxel counts, the consistency is 0. A threshold above ln K (the largest
    entropy): every voxel counts, and the consistency is Mean Teacher's for the same noise."""
    from baselines import ua_mt
    from baselines.mean_teacher import MeanTeacher

    torch.manual_seed(0)
    uamt = ua_mt.UncertaintyAwareMeanTeacher(semi_card("semi_uamt"))
    model = uamt.build_network(2, 2).eval()
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    target = torch.zeros(2, 16, 16, 16, dtype=torch.long)
    target[1] = IGNORE
    batch = Batch(torch.randn(2, 2, 16, 16, 16), target, ["a", "u"], [], [], torch.tensor([True, False]))

    def parts(method: MeanTeacher) -> dict[str, float]:
        torch.manual_seed(1)  # the same teacher input noise for both methods
        return method.loss(model, batch, StepInfo(5, 10, teacher=teacher))[1]

    monkeypatch.setattr(ua_mt, "uncertainty_threshold", lambda iteration, length, k: 0.0)
    none = parts(uamt)
    assert none["consistency"] == 0.0 and none["mask_fraction"] == 0.0
    monkeypatch.setattr(ua_mt, "uncertainty_threshold", lambda iteration, length, k: math.log(k) + 1e-3)
    every, mean_teacher = parts(uamt), parts(MeanTeacher(semi_card("semi_meanteacher")))
    assert every["mask_fraction"] == 1.0 and every["consistency"] > 0
    assert every["consistency"] == pytest.approx(mean_teacher["consistency"], rel=1e-6)


def test_ua_mt_teacher_passes_build_no_graph() -> None:
    """T = 8 teacher passes, each without autograd, even for a teacher whose weights need gradients."""
    from baselines.ua_mt import UncertaintyAwareMeanTeacher

    method = UncertaintyAwareMeanTeacher(semi_card("semi_uamt"))
    teacher = method.build_network(2, 2)
    assert all(p.requires_grad for p in teacher.parameters())
    passes: list[tuple[bool, bool]] = []
    teacher.register_forward_hook(lambda module, args, out: passes.append((torch.is_grad_enabled(), out.requires_grad)))
    probs, mask = method.teacher_target(teacher, torch.randn(2, 2, 16, 16, 16), StepInfo(0, 10))
    assert passes == [(False, False)] * 8
    assert probs.grad_fn is None and mask.grad_fn is None and mask.shape == (2, 1, 16, 16, 16)


class FixedLogits(torch.nn.Module):
    """A stub network: the same logits at every voxel, whatever the input, which it records."""

    def __init__(self, *logits: float) -> None:
        super().__init__()
        self.logits = torch.tensor(logits).view(1, -1, 1, 1, 1)
        self.seen: list[torch.Tensor] = []

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.seen.append(image)
        return self.logits.expand(image.shape[0], -1, *image.shape[2:]).clone().requires_grad_()


def test_cps_each_net_learns_the_other_nets_argmax() -> None:
    """A predicts (1/4, 3/4), argmax 1; B predicts (4/5, 1/5), argmax 0. A's pseudo-label loss is
    -ln p_A(0) = ln 4 and B's -ln p_B(1) = ln 5; swapping the nets swaps them (with its own argmax
    A's would be ln 4/3)."""
    from baselines.cps import CrossPseudoSupervision, PeerNetworks

    method = CrossPseudoSupervision(semi_card("semi_cps"))
    batch = Batch(torch.zeros(1, 2, 2, 2, 2), torch.full((1, 2, 2, 2), IGNORE), ["u"], [], [], torch.tensor([False]))
    a, b = FixedLogits(0.0, math.log(3)), FixedLogits(math.log(4), 0.0)
    _, parts = method.loss(PeerNetworks(a, b, False), batch, StepInfo(9, 10))
    assert (parts["pseudo_a"], parts["pseudo_b"]) == (pytest.approx(math.log(4)), pytest.approx(math.log(5)))
    assert parts["ce_a"] == parts["ce_b"] == 0.0  # no labelled patch
    _, swapped = method.loss(PeerNetworks(b, a, False), batch, StepInfo(9, 10))
    assert (swapped["pseudo_a"], swapped["pseudo_b"]) == (pytest.approx(math.log(5)), pytest.approx(math.log(4)))


def test_cps_nets_start_apart_and_the_optimiser_sees_both() -> None:
    from baselines.cps import CrossPseudoSupervision

    torch.manual_seed(0)
    model = CrossPseudoSupervision(semi_card("semi_cps")).build_network(2, 2)
    weights_a, weights_b = list(model.a.parameters()), list(model.b.parameters())
    assert len(list(model.parameters())) == len(weights_a) + len(weights_b)
    convs = [(pa, pb) for pa, pb in zip(weights_a, weights_b) if pa.dim() == 5]
    assert convs and all(not torch.equal(pa, pb) for pa, pb in convs)
    image = torch.randn(1, 2, 16, 16, 16)
    assert torch.equal(model.eval()(image), model.a(image))  # prediction: net A's


def test_xmodal_cps_feeds_ct_to_a_and_mr_to_b_and_predicts_with_both() -> None:
    from baselines.cps import CrossPseudoSupervision, PeerNetworks

    method = CrossPseudoSupervision(semi_card("semi_xmodal_cps"))
    a, b = FixedLogits(0.0, math.log(3)), FixedLogits(math.log(4), 0.0)
    model = PeerNetworks(a, b, True)
    image = torch.stack([torch.zeros(2, 2, 2), torch.ones(2, 2, 2)]).unsqueeze(0)  # CT 0, MR 1
    target = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    method.loss(model, Batch(image, target, ["a"], [], [], torch.tensor([True])), StepInfo(0, 10))
    assert a.seen[0].shape == b.seen[0].shape == (1, 1, 2, 2, 2)
    assert (a.seen[0] == 0).all() and (b.seen[0] == 1).all()
    mean = 0.5 * (torch.tensor([0.25, 0.75]) + torch.tensor([0.8, 0.2]))
    assert torch.allclose(model(image).exp()[0, :, 0, 0, 0], mean)
    built = method.build_network(2, 2).eval()
    assert built.a(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)  # one input channel each
    with pytest.raises(InputError, match="modality_split needs exactly two input channels"):
        method.build_network(1, 2)
