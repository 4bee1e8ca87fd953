"""The one training engine every method shares, and ``cmfnet train``.

It owns patch sampling (every patch holds labelled voxels), the optimiser and schedule, the EMA
teacher, checkpoints with resume after a kill, validation on the fold's validation cases with
best-checkpoint selection, progress and logging. A method plugin only turns a batch into a loss.

Outputs of a training run (``--out DIR``), written atomically (temporary name, then rename):

- ``model.pt``: ``{"format", "weights", "meta"}``, the selected weights and everything needed to
  apply them (declared output). Re-running a finished training whose ``meta["state_hash"]`` matches
  the card, train config, fold and dataset does nothing; ``--force`` retrains; a ``model.pt``
  trained with anything else is refused without ``--force``, so no run silently replaces it.
- ``last.pt``: the resume checkpoint (not a declared output, removed when training completes).
  It holds exactly what a bit-identical resume needs: the format version and the hash of what was
  trained, the iteration, elapsed seconds and the running log window, the model, the EMA teacher
  (methods that have one), the optimiser state, the schedule origin, the best validation score
  and, only when it is older than the checkpoint, the best weights (else they are the model's),
  the plugin's state (e.g. DMSPS pseudo-labels, S2L EMA maps: a plugin that replaces training
  targets keeps them there, so the engine stores no targets) and the numpy, python and torch
  (CPU and CUDA) random states. Size, in units of model.pt: 1 (model) + 2 (Adam's two moments;
  SGD: 1) + 1 while the best weights are older than the checkpoint + 1 for a teacher (USTM), so
  3 to 5; plugin state comes on top. Everything is a tensor or a plain type, so it loads with
  ``torch.load(weights_only=True)``: a file that needs more (a pickled object) is never
  executed; training then starts afresh and says why.
- ``train_log.csv``: one row per logged interval, appended to disk as it is made; a resume keeps
  the rows up to the checkpoint's iteration. ``meta.json``: card, config, seed, versions, total
  seconds across resumes.

A rerun removes partial files a killed write left in ``--out`` (and names them); SIGTERM unwinds
through the atomic writes, so it leaves none.

Scientific hygiene: training reads scribbles (or, for mask supervision, dense labels) of the
fold's *training* cases only; validation reads the validation cases; test cases are never read.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import io
import json
import math
import os
import platform
import random
import re
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from cmfnet import __version__
from cmfnet.errors import InputError
from cmfnet.inference import resolve_device, sliding_window_probabilities
from cmfnet.io import IGNORE, Dataset, Geometry, atomic_path, remove_leftover_partials, write_json
from cmfnet.method import (Batch, Card, Method, StepInfo, check_range, check_value, counted, load_card,
                           load_method, parse_override)
from cmfnet.normalize import normalize_image

# deterministic cuBLAS needs this before CUDA starts
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

#: layout version of model.pt and last.pt; a file with another version is refused (model.pt) or
#: not resumed from (last.pt). Raise it whenever what the files hold changes incompatibly.
FORMAT_VERSION = 1

# what TrainedModel needs from model.pt's meta (older files may lack some)
MODEL_META_KEYS = ("card", "card_path", "channels", "channel_names", "num_classes", "normalization",
                   "patch_size", "size_divisor", "train", "fold")

# ranges of the train block's values (their types come from TrainConfig's annotations)
_TRAIN_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "iterations": (lambda v: v >= 1, ">= 1"),
    "epochs": (lambda v: v is None or v >= 1, ">= 1 or null"),
    "iterations_per_epoch": (lambda v: v is None or v >= 1, ">= 1 or null"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "patch_size": (lambda v: len(v) == 3 and min(v) >= 1, "three positive sides (z, y, x)"),
    "optimizer": (lambda v: v in ("adam", "sgd"), "adam or sgd"),
    "lr": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "schedule": (lambda v: v in ("constant", "poly", "auto"), "constant, poly or auto"),
    "fg_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "val_interval": (lambda v: v >= 0, ">= 0 (0: validate only at the end)"),
    "val_reference": (lambda v: v in ("label", "scribble"), "label or scribble"),
    "val_overlap": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "checkpoint_interval": (lambda v: v >= 1, ">= 1"),
    "log_interval": (lambda v: v >= 1, ">= 1"),
    "seed": (lambda v: v >= 0, ">= 0"),
}


@dataclass
class TrainConfig:
    """The preset's ``train:`` block. Every method of a table trains with the same values."""

    iterations: int = 300
    epochs: int | None = None  # if set: iterations = epochs * iterations_per_epoch
    iterations_per_epoch: int | None = None  # default: ceil(training cases / batch size)
    batch_size: int = 2
    patch_size: list[int] = field(default_factory=lambda: [16, 64, 64])  # (z, y, x)
    optimizer: str = "adam"  # adam (paper) | sgd (WSL4MIS/DMSPS: momentum 0.9, poly schedule)
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "auto"  # constant | poly | auto (poly for sgd, constant for adam)
    fg_fraction: float = 0.5  # share of patches centred on a foreground-labelled voxel
    val_interval: int = 100  # iterations between validations (0: validate only at the end)
    val_reference: str = "label"  # label: dense labels of validation cases | scribble
    val_overlap: float = 0.25
    checkpoint_interval: int = 100
    log_interval: int = 20
    seed: int = 0
    amp: bool = True  # mixed precision (bfloat16 autocast) on CUDA; ignored on CPU

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: object = "train config") -> TrainConfig:
        """Check every value's type and range (one :class:`InputError` line naming it), then build."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(source, f"unknown train options {sorted(unknown)}")
        hints = typing.get_type_hints(cls)
        for name, value in data.items():
            check_value(source, f"train.{name}", value, hints[name])
            if name in _TRAIN_RANGES:
                rule, words = _TRAIN_RANGES[name]
                check_range(source, f"train.{name}", value, rule(value), words)
        return cls(**data)

    def total_iterations(self, n_train_cases: int) -> int:
        if self.epochs is None:
            return self.iterations
        per_epoch = self.iterations_per_epoch or math.ceil(n_train_cases / self.batch_size)
        return self.epochs * per_epoch


@dataclass
class TrainVolume:
    """A training case held in memory: normalised image and its supervision, padded to a patch."""

    image: np.ndarray  # (C, z, y, x) float32
    target: np.ndarray  # (z, y, x) uint8, 255 = unlabelled
    geometry: Geometry


def mixed_precision(device: torch.device, amp: bool) -> Any:
    """The autocast context training, validation and inference share: bfloat16 on CUDA when enabled."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    """Versions recorded with every model and results row."""
    import SimpleITK

    return {"cmfnet": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "cuda": torch.version.cuda or "none", "numpy": np.__version__,
            "simpleitk": SimpleITK.Version.VersionString()}


def _pad_volume(image: np.ndarray, target: np.ndarray, patch: list[int]) -> tuple[np.ndarray, np.ndarray]:
    pads = [(0, max(0, p - s)) for p, s in zip(patch, target.shape)]
    if not any(after for _, after in pads):
        return image, target
    fill = image.reshape(image.shape[0], -1).min(axis=1)
    image = np.stack([np.pad(ch, pads, constant_values=v) for ch, v in zip(image, fill)])
    return image, np.pad(target, pads, constant_values=IGNORE)


class PatchSampler:
    """Draws patches that always contain labelled voxels.

    With probability ``fg_fraction`` a patch is placed around a random foreground-labelled voxel,
    otherwise around any labelled voxel; the chosen voxel lies anywhere inside the patch.
    """

    def __init__(self, volumes: dict[str, TrainVolume], patch: list[int], fg_fraction: float,
                 rng: np.random.Generator) -> None:
        self.volumes = volumes
        self.cases = sorted(volumes)
        self.patch = patch
        self.fg_fraction = fg_fraction
        self.rng = rng
        self._index: dict[str, tuple[int, np.ndarray, np.ndarray | None]] = {}

    def _labelled(self, case: str) -> tuple[np.ndarray, np.ndarray | None]:
        target = self.volumes[case].target
        cached = self._index.get(case)
        if cached is None or cached[0] != id(target):  # a plugin replaced the target (DMSPS stage 2)
            flat = target.ravel()
            labelled = np.flatnonzero(flat != IGNORE)
            fg = np.flatnonzero((flat != IGNORE) & (flat > 0))
            if labelled.size == 0:
                raise InputError(case, "no labelled voxel in the training target")
            cached = (id(target), labelled, fg if fg.size else None)
            self._index[case] = cached
        return cached[1], cached[2]

    def sample(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[slice, ...]]]:
        images, targets, case_ids, boxes = [], [], [], []
        for _ in range(batch_size):
            case = self.cases[self.rng.integers(len(self.cases))]
            volume = self.volumes[case]
            labelled, fg = self._labelled(case)
            pool = fg if fg is not None and self.rng.random() < self.fg_fraction else labelled
            centre = np.unravel_index(pool[self.rng.integers(pool.size)], volume.target.shape)
            box = []
            for c, p, s in zip(centre, self.patch, volume.target.shape):
                lo, hi = max(0, c - p + 1), min(c, s - p)
                box.append(slice(start := int(self.rng.integers(lo, hi + 1)), start + p))
            box_t = tuple(box)
            images.append(volume.image[(slice(None), *box_t)])
            targets.append(volume.target[box_t])
            case_ids.append(case)
            boxes.append(box_t)
        return np.stack(images), np.stack(targets), case_ids, boxes


def _dice_foreground(pred: np.ndarray, reference: np.ndarray, num_classes: int) -> float:
    """Mean foreground Dice over labelled voxels of ``reference`` (255 ignored)."""
    keep = reference != IGNORE
    scores = []
    for k in range(1, num_classes):
        p, r = (pred == k) & keep, (reference == k) & keep
        denom = p.sum() + r.sum()
        if r.sum() == 0 and p.sum() == 0:
            continue
        scores.append(2.0 * (p & r).sum() / denom)
    return float(np.mean(scores)) if scores else 0.0


def _state_hash(card: Card, config: TrainConfig, fold: int, dataset: Dataset) -> str:
    """What a training result depends on: a checkpoint or model.pt with another hash is not this run's."""
    text = json.dumps({"card": card.to_dict(), "train": asdict(config), "fold": fold,
                       "dataset": dataset.meta}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class TrainLog:
    """``train_log.csv``, appended row by row as training makes them, so that a kill loses none.

    A row is one line, written and flushed in one call: a kill mid-row leaves a torn last line
    without its newline, which a resume drops together with every row after the checkpoint (they
    are made again). A row with a new column rewrites the file atomically with the wider header,
    which happens once or twice per run (the first row, the first validation).
    """

    def __init__(self, path: Path, resume_at: int | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.keys: list[str] = []
        if resume_at is not None and path.is_file():
            text = path.read_text()
            complete = text[:text.rfind("\n") + 1]
            reader = csv.DictReader(io.StringIO(complete))
            for row in reader:
                if None in row.values() or not row["iteration"].isdigit():
                    continue  # not a row this class wrote
                if int(row["iteration"]) <= resume_at:
                    self.rows.append({k: v for k, v in row.items() if k is not None})
            self.keys = list(reader.fieldnames or [])
        self._rewrite()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        new = [k for k in row if k not in self.keys]
        if new:
            self.keys += new
            self._rewrite()
            return
        line = io.StringIO()
        csv.DictWriter(line, fieldnames=self.keys, lineterminator="\n").writerow(row)
        with open(self.path, "a", newline="") as handle:
            handle.write(line.getvalue())

    def _rewrite(self) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as handle:
            if self.keys:
                writer = csv.DictWriter(handle, fieldnames=self.keys, lineterminator="\n")
                writer.writeheader()
                writer.writerows(self.rows)


class Trainer:
    """Trains one method on one fold. Plugins may use the attributes documented in the team contract."""

    def __init__(self, card: Card, dataset: Dataset, fold: int, out: Path, config: TrainConfig,
                 device: str = "auto") -> None:
        self.card = card
        self.dataset = dataset
        self.fold = fold
        self.out = Path(out)
        self.config = config
        self.device = resolve_device(device)
        self.method: Method = load_method(card)
        split = dataset.split(fold)
        self.train_cases: list[str] = list(split["train"])
        self.val_cases: list[str] = list(split.get("val", []))
        self.num_classes = dataset.num_classes
        self.channels = card.channels if card.channels is not None else list(range(dataset.num_channels))
        bad = [c for c in self.channels if not 0 <= c < dataset.num_channels]
        if bad:
            raise InputError(card.path, f"channels {bad} not in the dataset's {dataset.num_channels} channels")
        self.channel_names = [dataset.channels[c] for c in self.channels]
        self.normalization = dataset.meta.get("normalization", {})
        self.spacing = tuple(float(s) for s in dataset.meta.get("spacing", (1.0, 1.0, 1.0)))
        self.max_iterations = config.total_iterations(len(self.train_cases))
        seed_everything(config.seed)
        self.rng = np.random.default_rng(config.seed)
        try:
            self.model = self.method.build_network(len(self.channels), self.num_classes).to(self.device)
        except ValueError as err:  # the constructor's own checks (channel count, option combinations)
            raise InputError(card.path, f"network: {err}") from None
        self.size_divisor = int(getattr(self.model, "size_divisor", 16))
        bad_sides = [p for p in config.patch_size if p % self.size_divisor]
        if bad_sides:
            raise InputError(card.path, f"patch_size {config.patch_size} must be multiples of "
                                        f"{self.size_divisor} for this network")
        bottleneck = math.prod(p // self.size_divisor for p in config.patch_size)
        uses_batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        if uses_batch_norm and config.batch_size * bottleneck < 2:
            raise InputError(card.path, f"batch_size {config.batch_size} with patch_size {config.patch_size} "
                                        f"leaves BatchNorm one value per channel at the network's coarsest "
                                        f"level: use batch_size >= 2 or a larger patch")
        self.teacher: nn.Module | None = None
        if self.method.teacher_decay is not None:
            self.teacher = copy.deepcopy(self.model)
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.base_lr = config.lr
        self.optimizer = self._make_optimizer()
        self.volumes: dict[str, TrainVolume] = {}
        self.iteration = 0
        self.best = {"score": -1.0, "iteration": -1}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.lr_origin = 0  # iteration at which the current schedule started (reset_optimizer)
        self.state_hash = _state_hash(card, config, fold, dataset)
        self._running: dict[str, float] = {}  # sums over the current log window
        self._seconds_before = 0.0  # training time of the runs this one resumes
        self._started = time.time()

    # -- what plugins use -------------------------------------------------------------------
    def log(self, message: str) -> None:
        line = f"[{self.card.id} fold {self.fold} it {self.iteration}] {message}"
        if sys.stderr.isatty():
            tqdm.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def reset_optimizer(self, lr: float | None = None) -> None:
        self.base_lr = self.config.lr if lr is None else lr
        self.optimizer = self._make_optimizer()
        self.lr_origin = self.iteration

    @torch.no_grad()
    def predict_probabilities(self, image: np.ndarray, model: nn.Module | None = None,
                              overlap: float | None = None) -> torch.Tensor:
        model = model or self.model
        was_training = model.training
        model.eval()
        try:
            tensor = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
            probs = sliding_window_probabilities(
                tensor, lambda x: self._forward_logits(model, x), tuple(self.config.patch_size),
                self.num_classes, overlap=self.config.val_overlap if overlap is None else overlap,
                batch_size=self.config.batch_size, divisor=self.size_divisor)
        finally:
            model.train(was_training)
        return probs.float().cpu()

    # -- internals ------------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        lr = self.base_lr
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.config.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=self.config.momentum,
                                   weight_decay=self.config.weight_decay)
        return torch.optim.Adam(params, lr=lr, weight_decay=self.config.weight_decay)

    def _autocast(self) -> Any:
        return mixed_precision(self.device, self.config.amp)

    def _forward_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.method.logits(model, x).float()

    def _load_image(self, case: str) -> tuple[np.ndarray, Geometry]:
        image, geometry = self.dataset.load_image(case)
        image = normalize_image(image, self.dataset.channels, self.normalization)
        return image[self.channels], geometry

    def _load_volumes(self) -> None:
        for case in tqdm(self.train_cases, desc="loading", disable=not sys.stderr.isatty(), leave=False):
            image, geometry = self._load_image(case)
            if self.card.supervision == "mask":
                target = self.dataset.load_label(case)
            else:
                target = self.dataset.load_scribble(case, self.card.scribble_variant)
            image, target = _pad_volume(image, target, self.config.patch_size)
            self.volumes[case] = TrainVolume(image, target, geometry)

    def _validation_data(self) -> list[tuple[np.ndarray, np.ndarray]]:
        data = []
        for case in self.val_cases:
            image, _ = self._load_image(case)
            if self.config.val_reference == "label":
                reference = self.dataset.load_label(case)
            else:
                reference = self.dataset.load_scribble(case, self.card.scribble_variant)
            data.append((image, reference))
        return data

    def _validate(self, data: list[tuple[np.ndarray, np.ndarray]]) -> float:
        scores = [_dice_foreground(self.predict_probabilities(image).argmax(0).numpy(), reference,
                                   self.num_classes) for image, reference in data]
        return float(np.mean(scores))

    def _lr_at(self, iteration: int) -> float:
        schedule = self.config.schedule
        if schedule == "auto":
            schedule = "poly" if self.config.optimizer == "sgd" else "constant"
        base = self.base_lr
        if schedule == "constant":
            return base
        span = max(1, self.max_iterations - self.lr_origin)
        return base * (1 - min(iteration - self.lr_origin, span) / span) ** 0.9

    def _update_teacher(self) -> None:
        assert self.teacher is not None and self.method.teacher_decay is not None
        decay = min(1.0 - 1.0 / (self.iteration + 1), self.method.teacher_decay)
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.model.parameters()):
                t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
            for t, s in zip(self.teacher.buffers(), self.model.buffers()):
                t.copy_(s)

    def _elapsed(self) -> float:
        return self._seconds_before + time.time() - self._started

    def _checkpoint_state(self) -> dict[str, Any]:
        """What a bit-identical resume needs, as tensors and plain types (see the module docstring)."""
        best_is_model = self.best["iteration"] == self.iteration
        numpy_global = np.random.get_state()
        return {"format": FORMAT_VERSION, "hash": self.state_hash, "iteration": self.iteration,
                "seconds": self._elapsed(), "running": dict(self._running),
                "model": self.model.state_dict(),
                "teacher": self.teacher.state_dict() if self.teacher is not None else None,
                "optimizer": self.optimizer.state_dict(), "lr_origin": self.lr_origin,
                "base_lr": self.base_lr, "method": self.method.state_dict(), "best": dict(self.best),
                "best_state": None if best_is_model else self.best_state,
                "rng": {"generator": json.dumps(self.rng.bit_generator.state),
                        "python": json.dumps(random.getstate()),
                        "numpy_global": {"keys": torch.from_numpy(numpy_global[1].astype(np.int64)),
                                         "pos": int(numpy_global[2]), "has_gauss": int(numpy_global[3]),
                                         "gauss": float(numpy_global[4])},
                        "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None}}

    def _save_checkpoint(self) -> None:
        with atomic_path(self.out / "last.pt") as tmp:
            torch.save(self._checkpoint_state(), tmp)

    def _try_resume(self) -> bool:
        """Restore ``last.pt`` if it is a safe, compatible checkpoint of this very run; else say why."""
        path = self.out / "last.pt"
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - whatever the file holds, it is not resumed from
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            self.log(f"{path} is not a checkpoint that loads with weights_only=True ({reason}): "
                     "starting afresh")
            return False
        found = state.get("format") if isinstance(state, dict) else None
        if found != FORMAT_VERSION:
            self.log(f"{path} has checkpoint format {found if found is not None else 'none'}, this cmfnet "
                     f"{__version__} writes format {FORMAT_VERSION}: starting afresh")
            return False
        if state.get("hash") != self.state_hash:
            self.log(f"{path} was written with another card, config, fold or dataset: starting afresh")
            return False
        self.model.load_state_dict(state["model"])
        if self.teacher is not None and state["teacher"] is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.lr_origin = state["lr_origin"]
        self.base_lr = state["base_lr"]
        self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"])
        self.iteration = state["iteration"]
        self.best = state["best"]
        self.best_state = state["best_state"]
        if self.best_state is None and self.best["iteration"] == self.iteration:
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        rng = state["rng"]
        self.rng.bit_generator.state = json.loads(rng["generator"])
        version, internal, gauss = json.loads(rng["python"])
        random.setstate((version, tuple(internal), gauss))
        numpy_global = rng["numpy_global"]
        np.random.set_state(("MT19937", numpy_global["keys"].numpy().astype(np.uint32), numpy_global["pos"],
                             numpy_global["has_gauss"], numpy_global["gauss"]))
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])
        self._running = dict(state["running"])
        self._seconds_before = float(state["seconds"])
        self.log(f"resumed from last.pt at iteration {self.iteration}")
        return True

    def fit(self) -> dict[str, Any]:
        """Train to the configured number of iterations and write ``model.pt``.

        The output folder is made only once the data has loaded, so a run refused for bad input
        leaves none behind.
        """
        self._started = time.time()
        self._load_volumes()
        val_data = self._validation_data()
        self.out.mkdir(parents=True, exist_ok=True)
        removed = remove_leftover_partials(self.out)
        if removed:
            self.log(f"removed partial files a killed write left: {', '.join(p.name for p in removed)}")
        return self._train(val_data)

    def _train(self, val_data: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
        """Resume if possible, run the iterations, write the outputs."""
        resumed = self._try_resume()
        train_log = TrainLog(self.out / "train_log.csv", self.iteration if resumed else None)
        self.method.setup(self)
        sampler = PatchSampler(self.volumes, self.config.patch_size, self.config.fg_fraction, self.rng)
        extras = {"spacing": self.spacing, "channel_names": self.channel_names}
        interactive = sys.stderr.isatty()
        bar = tqdm(total=self.max_iterations, initial=self.iteration, disable=not interactive,
                   desc=f"{self.card.id} fold {self.fold}")
        window_start = time.time()
        self.model.train()
        while self.iteration < self.max_iterations:
            images, targets, case_ids, boxes = sampler.sample(self.config.batch_size)
            batch = Batch(torch.from_numpy(images).to(self.device),
                          torch.from_numpy(targets.astype(np.int64)).to(self.device), case_ids, boxes)
            lr = self._lr_at(self.iteration)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            step = StepInfo(self.iteration, self.max_iterations, self.teacher, extras)
            with self._autocast():
                loss, parts = self.method.loss(self.model, batch, step)
            if not torch.isfinite(loss):
                raise RuntimeError(f"{self.card.id}: non-finite loss at iteration {self.iteration}: {parts}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.teacher is not None:
                self._update_teacher()
            self.method.after_step(self, self.iteration)
            self.iteration += 1
            running = self._running
            for key, value in {"loss": float(loss.detach()), **parts}.items():
                running[key] = running.get(key, 0.0) + float(value)
            running["_n"] = running.get("_n", 0.0) + 1
            bar.update(1)
            validate_now = (self.config.val_interval and self.iteration % self.config.val_interval == 0) \
                or self.iteration == self.max_iterations
            row: dict[str, Any] | None = None
            if self.iteration % self.config.log_interval == 0 or validate_now:
                n = running.pop("_n")
                row = {"iteration": self.iteration, "lr": lr,
                       **{k: v / n for k, v in running.items()},
                       "sec_per_it": (time.time() - window_start) / n}
                self._running, window_start = {}, time.time()
            if validate_now and val_data:
                score = self._validate(val_data)
                row = (row or {"iteration": self.iteration}) | {"val_dice": score}
                if score > self.best["score"]:
                    self.best = {"score": score, "iteration": self.iteration}
                    self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            if row is not None:
                train_log.append(row)
                bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}", val=row.get("val_dice", "-"))
                if not interactive:
                    self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in row.items() if k != "iteration"))
            if self.iteration % self.config.checkpoint_interval == 0 and self.iteration < self.max_iterations:
                self._save_checkpoint()
        bar.close()
        return self._finish(self._elapsed())

    def _finish(self, seconds: float) -> dict[str, Any]:
        final_state = self.best_state if self.best_state is not None else {
            k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        meta = {"card": self.card.to_dict(), "card_path": str(self.card.path), "method_id": self.card.id,
                "train": asdict(self.config), "max_iterations": self.max_iterations,
                "fold": self.fold, "dataset": self.dataset.name, "dataset_path": str(self.dataset.root),
                "train_cases": self.train_cases, "val_cases": self.val_cases,
                "num_classes": self.num_classes, "channels": self.channels,
                "channel_names": self.channel_names, "normalization": self.normalization,
                "spacing": list(self.spacing), "patch_size": self.config.patch_size,
                "size_divisor": self.size_divisor, "seed": self.config.seed,
                "selected_iteration": self.best["iteration"] if self.best_state is not None else self.iteration,
                "best_val_dice": self.best["score"] if self.best_state is not None else None,
                "seconds": round(seconds, 1), "device": str(self.device), "versions": versions(),
                "state_hash": self.state_hash, "format": FORMAT_VERSION}
        meta = json.loads(json.dumps(meta))  # plain types only: loadable with weights_only=True
        write_json(meta, self.out / "meta.json")
        with atomic_path(self.out / "model.pt") as tmp:
            torch.save({"format": FORMAT_VERSION, "weights": final_state, "meta": meta}, tmp)
        (self.out / "last.pt").unlink(missing_ok=True)
        self.log(f"done in {seconds:.0f} s; selected iteration {meta['selected_iteration']}"
                 + (f" (val Dice {meta['best_val_dice']:.4f})" if meta["best_val_dice"] is not None else ""))
        return meta


def _version_tuple(text: object) -> tuple[int, ...]:
    """``"0.10.2"`` -> (0, 10, 2): enough to tell which of two release numbers is newer."""
    return tuple(int(part) for part in re.findall(r"\d+", str(text).split("+")[0])[:3])


def read_model_file(path: Path) -> dict[str, Any]:
    """``model.pt``'s content once its structure is checked; one :class:`InputError` line otherwise.

    A file of another format version is refused (the version says what the file holds). A file
    written by a newer cmfnet of the same format is read with a warning: the format, not the
    release number, is the compatibility promise.
    """
    if not path.is_file():
        raise InputError(path, "no trained model here (model.pt missing)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a corrupt file to the user
        raise InputError(path, f"cannot load model ({type(err).__name__}); it is not a model.pt that "
                               "loads with weights_only=True") from None
    if not isinstance(state, dict) or not isinstance(state.get("meta"), dict):
        raise InputError(path, "not a cmfnet model: no 'meta' record")
    found = state.get("format")
    if found != FORMAT_VERSION:
        raise InputError(path, f"model format {found if found is not None else 'none (older than format 1)'}, "
                               f"this cmfnet {__version__} reads format {FORMAT_VERSION}: retrain the model")
    meta = state["meta"]
    missing = [key for key in MODEL_META_KEYS if key not in meta]
    if missing:
        raise InputError(path, f"meta lacks {', '.join(missing)}: written by an older cmfnet? retrain the model")
    weights = state.get("weights")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise InputError(path, "no 'weights' record of tensors")
    written_by = (meta.get("versions") or {}).get("cmfnet")
    if written_by is not None and _version_tuple(written_by) > _version_tuple(__version__):
        print(f"cmfnet: warning: {path} was written by cmfnet {written_by}, newer than this {__version__}; "
              f"reading it as format {FORMAT_VERSION}", file=sys.stderr)
    return state


def _weights_problem(model: nn.Module, weights: dict[str, torch.Tensor]) -> str | None:
    """Which weights a network lacks, has too many of, or holds in another shape (None: they fit)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k} {tuple(weights[k].shape)} not {tuple(v.shape)}" for k, v in expected.items()
              if k in weights and weights[k].shape != v.shape]
    parts = [f"{label} {', '.join(names[:3])}" + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
             for label, names in (("missing", missing), ("unexpected", unexpected), ("shape of", shapes))
             if names]
    return "; ".join(parts) or None


class TrainedModel:
    """A trained model as written by the engine, ready to segment new images."""

    def __init__(self, path: Path, method: Method, model: nn.Module, meta: dict[str, Any]) -> None:
        self.path = path
        self.method = method
        self.model = model
        self.meta = meta

    @property
    def fold(self) -> int:
        return int(self.meta["fold"])

    @property
    def channel_names(self) -> list[str]:
        return list(self.meta["channel_names"])

    @classmethod
    def load(cls, model_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainedModel:
        """Load ``model.pt``; ``overrides`` (``params.X=V``) may change inference-only params only."""
        path = Path(model_dir) / "model.pt"
        state = read_model_file(path)
        meta = state["meta"]
        if not isinstance(meta["card"], dict):
            raise InputError(path, "meta 'card' is not a mapping")
        card = Card.from_dict(meta["card"], meta["card_path"])
        try:
            method = load_method(card)
        except InputError as err:
            raise InputError(path, f"its card: {err.problem}") from None
        if overrides:
            for text in overrides:
                try:
                    key, value = parse_override(text)
                except ValueError as err:
                    raise InputError("--set", str(err)) from None
                name = key.removeprefix("params.")
                if not key.startswith("params.") or name not in method.inference_params:
                    allowed = ", ".join(f"params.{p}" for p in sorted(method.inference_params)) or "none"
                    raise InputError("--set", f"'{key}' would change what was trained; a trained "
                                              f"'{method.name}' model can only change: {allowed}")
                card.params[name] = value
            method = load_method(card)
        try:
            model = method.build_network(len(meta["channels"]), meta["num_classes"])
        except (ValueError, TypeError) as err:
            raise InputError(path, f"its card's network cannot be built ({err})") from None
        problem = _weights_problem(model, state["weights"])
        if problem:
            raise InputError(path, f"weights do not fit the network of its card: {problem}")
        model.load_state_dict(state["weights"])
        model.eval()
        return cls(path, method, model, meta)

    def check_dataset(self, dataset: Dataset) -> None:
        names = [dataset.channels[c] for c in self.meta["channels"] if c < dataset.num_channels]
        if names != self.channel_names:
            raise InputError(dataset.root / "dataset.json",
                             f"channels {dataset.channels} do not provide the model's {self.channel_names}")

    @torch.no_grad()
    def segment(self, image: np.ndarray, device: torch.device, overlap: float = 0.5) -> np.ndarray:
        """Label map (uint8) of a raw (C, z, y, x) image with all of the dataset's channels."""
        channels = self.meta["channels"]
        names = self.meta["channel_names"]
        if image.shape[0] <= max(channels):
            raise InputError(self.path, f"image has {image.shape[0]} channels, model uses {channels}")
        selected = normalize_image(image[channels], names, self.meta["normalization"])
        self.model.to(device)
        tensor = torch.from_numpy(np.ascontiguousarray(selected)).to(device)
        amp = self.meta["train"].get("amp", True)

        def predictor(x: torch.Tensor) -> torch.Tensor:
            with mixed_precision(device, amp):
                return self.method.logits(self.model, x).float()

        probs = sliding_window_probabilities(tensor, predictor, tuple(self.meta["patch_size"]),
                                             self.meta["num_classes"], overlap=overlap,
                                             batch_size=self.meta["train"]["batch_size"],
                                             divisor=self.meta["size_divisor"])
        return probs.argmax(0).to(torch.uint8).cpu().numpy()


# -- cmfnet train ---------------------------------------------------------------------------------

def resolve_train_config(card: Card, preset: dict[str, Any] | None,
                         preset_source: object = "train config") -> TrainConfig:
    """Engine defaults < the preset's train block < the card's train block (incl. --set train.*).

    The preset is checked on its own first, so that a bad value there is reported against it.
    """
    TrainConfig.from_dict(preset or {}, preset_source)
    return TrainConfig.from_dict({**(preset or {}), **card.train}, card.path)


def _finished_already(trainer: Trainer, force: bool) -> bool:
    """Whether ``model.pt`` already holds this very training (nothing to do); refuse another one's."""
    path = trainer.out / "model.pt"
    if force or not path.exists():
        return False
    try:
        meta = read_model_file(path)["meta"]
    except InputError as err:
        raise InputError(path, f"{err.problem}; --force retrains over it") from None
    if meta.get("state_hash") != trainer.state_hash:
        raise InputError(path, "exists and was trained with another card, train config, fold or dataset; "
                               "--force retrains over it")
    return True


def _run(args: argparse.Namespace) -> int:
    card = load_card(args.card, args.set or (), args.variant)
    preset: dict[str, Any] = {}
    if args.train_config:
        text = args.train_config
        try:
            data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(Path(text).read_text())
        except (json.JSONDecodeError, yaml.YAMLError, OSError) as err:
            raise InputError(text[:80], f"cannot read train config ({err})") from None
        preset = data.get("train", data) if isinstance(data, dict) else data
        if not isinstance(preset, dict):
            raise InputError(text[:80], "a train config must be a mapping (optionally under 'train:')")
    config = resolve_train_config(card, preset, args.train_config)
    if args.out.exists() and not args.out.is_dir():
        raise InputError(args.out, "--out is an existing file, not a folder")
    if args.threads is not None and args.threads < 1:
        raise InputError("--threads", f"{args.threads}: must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = Dataset(args.dataset)
    trainer = Trainer(card, dataset, args.fold, args.out, config, device=args.device)
    if _finished_already(trainer, args.force):
        print(f"{args.out / 'model.pt'} exists and was trained with this card, config, fold and dataset: "
              "nothing to do (--force retrains)")
        return 0
    meta = trainer.fit()
    print(f"trained {card.id} fold {args.fold}: {counted(meta['max_iterations'], 'iteration')} in {meta['seconds']} s "
          f"-> {args.out / 'model.pt'}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train one method (card) on one fold",
        description="Train a method on a fold's training cases, select the checkpoint on its validation "
                    "cases, and write OUT/model.pt. Re-running after a kill resumes from OUT/last.pt; "
                    "re-running a finished training does nothing (--force retrains).")
    parser.add_argument("--card", type=Path, required=True, help="method card, e.g. methods/pce.yaml")
    parser.add_argument("--variant", help="variant id, when the card is a variant file (methods/table5.yaml)")
    parser.add_argument("--dataset", type=Path, required=True, help="dataset folder")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--train-config", help="the preset's train block: a YAML file with a 'train:' "
                                               "mapping (e.g. config/smoke.yaml) or a JSON object")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a card field, e.g. train.iterations=3 or params.weight=0.1")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--force", action="store_true",
                        help="retrain even if OUT/model.pt exists (it is replaced when training completes)")
    parser.set_defaults(func=_run)


