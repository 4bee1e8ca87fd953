"""``cmfnet train`` for an :class:`~cmfnet.training.contract.ExternalMethod`: the framework trains,
this module writes the same outputs as the engine (``model.pt``, ``meta.json``), so ``cmfnet
predict``, the pipeline and ``cmfnet evaluate`` treat the model like every other."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from cmfnet.data.dataset import Dataset
from cmfnet.data.io import remove_leftover_partials
from cmfnet.errors import InputError
from cmfnet.training.config import TrainConfig
from cmfnet.training.contract import ExternalMethod, ExternalRun
from cmfnet.training.device import resolve_device
from cmfnet.training.engine import seed_everything, state_hash
from cmfnet.training.model import model_meta, versions, write_trained_model
from cmfnet.training.train_log import TrainLog


def external_state_hash(method: ExternalMethod, config: TrainConfig, fold: int, dataset: Dataset) -> str:
    """The engine's state hash of an external training: its card without the ignored network."""
    return state_hash(method.training_card(), config, fold, dataset)


def fit_external(method: ExternalMethod, dataset: Dataset, fold: int, out: Path, config: TrainConfig,
                 device: str = "auto") -> dict[str, Any]:
    """Let the method's framework train, then write ``model.pt`` and ``meta.json`` atomically."""
    card = method.card
    torch_device = resolve_device(device)
    split = dataset.split(fold)
    channels = card.channels if card.channels is not None else list(range(dataset.num_channels))
    bad = [c for c in channels if not 0 <= c < dataset.num_channels]
    if bad:
        raise InputError(card.path, f"channels {bad} not in the dataset's {dataset.num_channels} channels")

    def log(message: str) -> None:
        print(f"[{card.id} fold {fold}] {message}", flush=True)

    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    remove_leftover_partials(out)
    seed_everything(config.seed)
    weights, external = method.fit(ExternalRun(dataset, fold, out, config, torch_device, channels, log))
    # train_log.csv as the engine writes it, for `cmfnet curves` (the pipeline reads every model's)
    train_log = TrainLog(out / "train_log.csv")
    for row in external.pop("train_log", []):
        train_log.append(row)
    if not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise TypeError(f"{type(method).__name__}.fit must return a state dict of tensors")
    iterations = int(external.get("iterations", 0))
    meta = write_trained_model(out, weights, model_meta(
        card, config, dataset, fold, channels, max_iterations=iterations,
        train_cases=list(split["train"]), labelled_cases=list(split["train"]),
        val_cases=list(split.get("val", [])),
        # the framework resamples itself: no model spacing for `cmfnet predict` to resample to
        spacing=None, patch_size=list(external.get("patch_size", [])), size_divisor=1,
        selection="last", selected_iteration=iterations, selected_val_dice=None,
        seconds=round(time.time() - started, 1), device=str(torch_device),
        versions={**versions(), **external.get("versions", {})},
        state_hash=external_state_hash(method, config, fold, dataset), external=external))
    log(f"done in {meta['seconds']:.0f} s -> {out / 'model.pt'}")
    return meta
