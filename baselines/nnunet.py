"""nnU-Net+pL: the real nnU-Net v2 (``nnunetv2`` from PyPI) trained on scribbles with a partial loss.

ScribbleBench (Gotkowski et al., arXiv 2403.12834) calls nnU-Net+pL nnU-Net trained on scribbles
whose unlabelled voxels carry nnU-Net's *ignore label*. That is nnU-Net's own feature, not a
look-alike: with an ignore label in ``dataset.json`` (the highest integer label, named
``"ignore"``), ``nnUNetTrainer._build_loss`` passes ``ignore_label`` to ``DC_and_CE_loss``
(``nnunetv2/training/loss/compound_losses.py``), which sets the cross-entropy's ``ignore_index``
and gives the soft Dice a ``loss_mask`` of the labelled voxels: both terms see scribbled voxels
only, which is the partial loss. With ``supervision: mask`` the same plugin trains ordinary nnU-Net
on the dense masks (Table III).

How one fold becomes a row (an :class:`~cmfnet.training.contract.ExternalMethod`):

1. Export, under the model folder (``<out>/nnunet/raw``): ``imagesTr`` with the fold's *training
   and validation* cases only (never a test case), channels renumbered ``_0000``, ``_0001`` in the
   card's order (links to our files: our layout is nnU-Net's), ``labelsTr`` with the card's
   scribble variant, our 255 (unlabelled) mapped to the ignore label, or the dense masks for a mask
   card. Validation cases get dense labels under the preset's ``val_reference: label`` (as the
   engine validates) and scribbles under ``scribble``; nnU-Net's validation only logs its pseudo
   Dice here, the final weights are kept. ``splits_final.json`` makes nnU-Net's fold 0 exactly our
   fold's train/val.
2. nnU-Net's fingerprint, planner (``ExperimentPlanner``) and preprocessor for one configuration
   (3d_fullres), one process. The fingerprint is taken before the validation cases are exported,
   so their labels never shape the normalisation or the plans (nnU-Net's CT scheme clips at
   percentiles of the intensities under the labels). ``nnUNet_raw``/``_preprocessed``/``_results``
   point into the work folder (set before nnU-Net is imported; 2.8.1 also reads them at use).
3. ``nnUNetTrainer`` itself, subclassed only to take the schedule from the card's params
   (nnU-Net's 1000 epochs x 250 iterations, 50 validation iterations by default; the CPU smoke
   test sets 1 x 2), driven in-process: nnU-Net's CLI only finds trainer classes in its package.
4. ``model.pt`` holds the final network's state dict and ``meta["external"]`` the plans and
   dataset.json (plain JSON; nnU-Net's own checkpoint needs ``weights_only=False``, ours does
   not). Prediction rebuilds the network from the plans (``get_network_from_plans``) and runs
   ``nnUNetPredictor`` (``manual_initialization``, ``predict_single_npy_array`` at the case's
   spacing), which normalises, resamples and returns labels on the case's own grid.

Normalisation is nnU-Net's: a channel named ``CT`` gets its CT scheme, every other z-score. The
card's ``network:`` block and a preset's ``network:`` overrides are ignored (nnU-Net plans its
network from the data); of the preset's ``train:`` block only ``seed`` and ``val_reference`` apply.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmfnet.data.io import IGNORE, write_image, write_json
from cmfnet.errors import InputError
from cmfnet.training.contract import ExternalMethod, ExternalRun, Spacing

DATASET_ID = 999  # one private nnU-Net folder per model: the id never clashes with a user's
DATASET_NAME = f"Dataset{DATASET_ID:03d}_cmfnet"
PLANS = "nnUNetPlans"
MISSING = "nnU-Net rows need the nnunet extra: pip install -e '.[nnunet]'"


def require_nnunet(where: object) -> None:
    """One InputError line when nnunetv2 is not installed."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise InputError(where, MISSING)


def set_nnunet_paths(work: Path) -> dict[str, Path]:
    """Point nnU-Net's three folders into ``work`` (before nnunetv2 is imported)."""
    paths = {"nnUNet_raw": work / "raw", "nnUNet_preprocessed": work / "preprocessed",
             "nnUNet_results": work / "results"}
    for name, path in paths.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(path)
    return paths


def _link(source: Path, target: Path) -> None:
    try:
        os.symlink(source.resolve(), target)
    except OSError:  # a file system without links
        shutil.copyfile(source, target)


def nnunet_fold(run: ExternalRun) -> dict[str, list[str]]:
    """Our fold as nnU-Net's fold 0 ({train, val}); never a test case."""
    split = run.dataset.split(run.fold)
    train = list(split["train"])
    val = list(split.get("val") or []) or train  # nnU-Net needs validation cases: the training ones then
    assert not set(train + val) & set(split.get("test", [])), "a test case would be exported"
    return {"train": train, "val": val}


def export_cases(run: ExternalRun, cases: list[str], raw: Path, *, dense: bool, variant: str,
                 ignore_label: bool) -> None:
    """Add ``cases`` to the nnU-Net raw dataset in ``raw``, with dense masks or with ``variant``'s
    scribbles (our 255 as nnU-Net's ignore label), and rewrite its ``dataset.json`` for every case
    exported so far; ``ignore_label`` declares that label (any case has or will have scribbles)."""
    dataset = run.dataset
    num_classes = dataset.num_classes
    folder = raw / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    for case in cases:
        paths = dataset.image_paths(case)
        for index, channel in enumerate(run.channels):
            _link(paths[channel], folder / "imagesTr" / f"{case}_{index:04d}.nii.gz")
        if dense:
            label = dataset.load_label(case)
        else:
            label = dataset.load_scribble(case, variant)
            label = np.where(label == IGNORE, num_classes, label).astype(np.uint8)  # 255 -> ignore label
        write_image(label, folder / "labelsTr" / f"{case}.nii.gz", dataset.geometry(case))
    labels = dict(sorted(dataset.labels.items(), key=lambda item: item[1]))
    if ignore_label:
        labels["ignore"] = num_classes  # nnU-Net's rule: the ignore label is the highest integer label
    write_json({"channel_names": {str(i): dataset.channels[c] for i, c in enumerate(run.channels)},
                "labels": labels, "numTraining": len(list((folder / "labelsTr").glob("*.nii.gz"))),
                "file_ending": ".nii.gz"}, folder / "dataset.json")


@contextlib.contextmanager
def _default_sigterm() -> Iterator[None]:
    """SIGTERM's default action while nnU-Net runs: its worker processes (forked) would inherit
    `cmfnet`'s handler, which raises to unwind atomic writes, and print a traceback each when
    nnU-Net ends its pools. Nothing of ours is being written meanwhile: a killed run leaves only
    the work folder, which the next run deletes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _trainer_class(epochs: int, iterations: int, val_iterations: int) -> type:
    """nnU-Net's own trainer with the card's schedule; nothing else changed."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainerCmfnet(nnUNetTrainer):  # noqa: N801 - nnU-Net's naming
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")) -> None:
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = epochs
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = val_iterations

    return nnUNetTrainerCmfnet


class NnUNet(ExternalMethod):
    """nnU-Net v2 through its own planner, preprocessor, trainer and predictor."""

    name = "nnunet"
    defaults = {"configuration": "3d_fullres", "epochs": 1000, "iterations_per_epoch": 250,
                "val_iterations_per_epoch": 50, "data_workers": None, "keep_work": False, "mirroring": True}
    # data_workers: nnU-Net's data-augmentation processes (nnUNet_n_proc_DA; None: nnU-Net's own
    # choice); keep_work: keep the exported and preprocessed data under <out>/nnunet;
    # mirroring: test-time mirroring, nnU-Net's default (inference only)
    param_types = {"data_workers": int | None}
    inference_params = frozenset({"mirroring"})

    def __init__(self, card: Any) -> None:
        super().__init__(card)
        self._predictor: tuple[tuple[Any, ...], Any] | None = None

    def fit(self, run: ExternalRun) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        card = self.card
        if card.supervision == "semi":
            raise InputError(card.path, "nnU-Net rows train on scribbles or masks, not supervision: semi")
        require_nnunet(card.path)
        with _default_sigterm():
            return self._fit(run)

    def _fit(self, run: ExternalRun) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        card = self.card
        work = Path(run.out) / "nnunet"
        shutil.rmtree(work, ignore_errors=True)  # a rerun starts afresh: nnU-Net's state is not resumed
        paths = set_nnunet_paths(work)
        import nnunetv2
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                          preprocess)

        fold, raw = nnunet_fold(run), paths["nnUNet_raw"]
        scribbles = card.supervision != "mask"
        export_cases(run, fold["train"], raw, dense=not scribbles, variant=card.scribble_variant,
                     ignore_label=scribbles)
        configuration = self.params["configuration"]
        threads = torch.get_num_threads()  # the planner sets torch's threads to nnUNet_n_proc_DA's
        # the fingerprint (spacing, shapes, CT intensity statistics under the labels) sees the
        # training cases only: validation labels choose nothing here, as in the engine
        extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True, verbose=False)
        held_out = [case for case in fold["val"] if case not in fold["train"]]
        export_cases(run, held_out, raw, dense=not scribbles or run.config.val_reference == "label",
                     variant=card.scribble_variant, ignore_label=scribbles)
        run.log(f"exported {len(fold['train'])} training and {len(held_out)} validation cases "
                f"to {raw / DATASET_NAME}")
        plan_experiments([DATASET_ID])
        preprocess([DATASET_ID], PLANS, (configuration,), (1,), verbose=False)
        torch.set_num_threads(threads)
        if self.params["data_workers"] is not None:  # after planning, which refuses 0 (its thread count)
            os.environ["nnUNet_n_proc_DA"] = str(self.params["data_workers"])
        preprocessed = paths["nnUNet_preprocessed"] / DATASET_NAME
        write_json([fold], preprocessed / "splits_final.json")  # nnU-Net's fold 0 = our fold

        plans = json.loads((preprocessed / f"{PLANS}.json").read_text())
        dataset_json = json.loads((preprocessed / "dataset.json").read_text())
        trainer_class = _trainer_class(self.params["epochs"], self.params["iterations_per_epoch"],
                                       self.params["val_iterations_per_epoch"])
        trainer = trainer_class(plans={**plans, "continue_training": False}, configuration=configuration,
                                fold=0, dataset_json=dataset_json, device=run.device)
        trainer.run_training()
        network = getattr(trainer.network, "_orig_mod", trainer.network)  # torch.compile's wrapper
        weights = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
        axes = trainer.inference_allowed_mirroring_axes
        history = trainer.logger.local_logger.my_fantastic_logging
        iterations = self.params["iterations_per_epoch"]
        # one row per epoch; val_dice is nnU-Net's pseudo Dice (validation patches, not whole volumes)
        train_log = [{"iteration": (epoch + 1) * iterations, "lr": float(history["lrs"][epoch]),
                      "loss": float(history["train_losses"][epoch]), "val_loss": float(history["val_losses"][epoch]),
                      "val_dice": float(history["mean_fg_dice"][epoch]),
                      "sec_per_it": (history["epoch_end_timestamps"][epoch]
                                     - history["epoch_start_timestamps"][epoch]) / iterations}
                     for epoch in range(len(history["train_losses"]))]
        external = {"plans": plans, "dataset_json": dataset_json, "configuration": configuration,
                    "trainer": trainer_class.__name__, "num_input_channels": len(run.channels),
                    "mirroring_axes": None if axes is None else [int(a) for a in axes],
                    "iterations": self.params["epochs"] * self.params["iterations_per_epoch"],
                    "patch_size": [int(p) for p in plans["configurations"][configuration]["patch_size"]],
                    "versions": {"nnunetv2": getattr(nnunetv2, "__version__", _distribution_version())},
                    "train_log": train_log}
        if not self.params["keep_work"]:
            # derived copies of the data, and nnU-Net's checkpoints (model.pt holds the weights);
            # nnU-Net's training log and progress plot stay in <out>/nnunet/results
            for name in ("nnUNet_raw", "nnUNet_preprocessed"):
                shutil.rmtree(paths[name], ignore_errors=True)
            for checkpoint in paths["nnUNet_results"].rglob("*.pth"):
                checkpoint.unlink()
        return weights, external

    # -- prediction -------------------------------------------------------------------------------
    def _managers(self, external: dict[str, Any]) -> tuple[Any, Any]:
        require_nnunet(self.card.path)
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans_manager = PlansManager(external["plans"])
        return plans_manager, plans_manager.get_configuration(external["configuration"])

    def build_predictor_network(self, external: dict[str, Any]) -> nn.Module:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        plans_manager, config = self._managers(external)
        heads = plans_manager.get_label_manager(external["dataset_json"]).num_segmentation_heads
        return get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                      config.network_arch_init_kwargs_req_import, external["num_input_channels"],
                                      heads, allow_init=False, deep_supervision=False)

    def segment(self, network: nn.Module, image: np.ndarray, spacing: Spacing, external: dict[str, Any],
                device: torch.device, overlap: float) -> np.ndarray:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        key = (id(network), str(device), overlap)
        if self._predictor is not None and self._predictor[0] == key:  # one per model, not per case
            return self._predict(self._predictor[1], image, spacing)
        plans_manager, config = self._managers(external)
        predictor = nnUNetPredictor(tile_step_size=1.0 - overlap, use_gaussian=True,
                                    use_mirroring=bool(self.params["mirroring"]),
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        axes = external.get("mirroring_axes")
        predictor.manual_initialization(network, plans_manager, config, [network.state_dict()],
                                        external["dataset_json"], external["trainer"],
                                        None if axes is None else tuple(axes))
        self._predictor = (key, predictor)
        return self._predict(predictor, image, spacing)

    @staticmethod
    def _predict(predictor: Any, image: np.ndarray, spacing: Spacing) -> np.ndarray:
        labels = predictor.predict_single_npy_array(image.astype(np.float32), {"spacing": list(spacing)})
        return np.asarray(labels).astype(np.uint8)


def _distribution_version() -> str:
    from importlib.metadata import version

    return version("nnunetv2")
