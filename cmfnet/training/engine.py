"""The one training engine every method shares, and ``cmfnet train``.

It owns patch sampling (every patch holds labelled voxels), the optimiser and schedule, the EMA
teacher, checkpoints with resume after a kill, validation on the fold's validation cases, model
selection (``train.selection``: best, last or an EMA of the weights), progress and logging. A
plugin only turns a batch into a loss.

Outputs of a training run (``--out DIR``), written atomically (temporary name, then rename):

- ``model.pt``: ``{"format", "weights", "meta"}``, the selected weights and everything needed to
  apply them (declared output). Re-running a finished training whose ``meta["state_hash"]`` matches
  the card, train config, fold and dataset does nothing; ``--force`` retrains; a ``model.pt``
  trained with anything else is refused without ``--force``, so no run silently replaces it.
- ``last.pt``: the resume checkpoint (not a declared output, removed when training completes). It
  holds exactly what a bit-identical resume needs: the format version and the hash of what was
  trained, the iteration, elapsed seconds and the running log window, the model, the EMA teacher
  (methods that have one), the weight average (``selection: ema``), the optimiser state, the
  schedule origin, the best validation score and, only when it is older than the checkpoint, the
  best weights (else they are the model's), the plugin's state (e.g. DMSPS pseudo-labels, S2L EMA
  maps: a plugin that replaces training targets keeps them there, so the engine stores no targets)
  and the numpy, python and torch (CPU and CUDA) random states. Size, in units of model.pt: 1
  (model) + 2 (Adam's two moments; SGD: 1) + 1 while the best weights are older than the
  checkpoint + 1 for a teacher (USTM) + 1 for the weight average, so 3 to 6; plugin state comes on
  top. Everything is a tensor or a plain type, so it loads with ``torch.load(weights_only=True)``:
  a file that needs more (a pickled object) is never executed; training then starts afresh and
  says why.
- ``train_log.csv``: one row per logged interval, appended to disk as it is made; a resume keeps
  the rows up to the checkpoint's iteration. ``meta.json``: card, config, seed, versions, total
  seconds across resumes.

A rerun removes partial files a killed write left in ``--out`` (and names them); SIGTERM unwinds
through the atomic writes, so it leaves none.

Scientific hygiene: training reads scribbles (or, for mask supervision, dense labels) of the
fold's *training* cases only, and under semi-supervision the masks of its labelled cases only;
validation reads the validation cases; test cases are never read.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cmfnet import __version__
from cmfnet.data.io import IGNORE, Geometry, atomic_path, remove_leftover_partials
from cmfnet.data.dataset import Dataset
from cmfnet.data.normalize import normalize_image
from cmfnet.errors import InputError
from cmfnet.training.cards import Card
from cmfnet.training.config import TrainConfig
from cmfnet.training.contract import Batch, Method, StepInfo, TrainingContext
from cmfnet.training.device import amp_dtype, mixed_precision, resolve_device, set_cpu_layout
from cmfnet.training.model import FORMAT_VERSION, model_meta, write_trained_model
from cmfnet.training.plugins import load_method
from cmfnet.training.sampling import TrainVolume, pad_volume
from cmfnet.training.semi import labelled_cases, make_sampler, training_target
from cmfnet.training.sliding_window import sliding_window_probabilities
from cmfnet.training.train_log import TrainLog

# deterministic cuBLAS needs this before CUDA starts
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def state_hash(card_settings: dict[str, Any], config: TrainConfig, fold: int, dataset: Dataset) -> str:
    """What a training result depends on: a checkpoint or model.pt with another hash is not this run's.
    ``card_settings`` is the card as its method trains with it (``Method.training_card``)."""
    text = json.dumps({"card": card_settings, "train": config.settings(), "fold": fold,
                       "dataset": dataset.meta}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that no optimiser trains: the target of an exponential moving average."""
    copied = copy.deepcopy(model)
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied


def _ema_update(target: nn.Module, source: nn.Module, iteration: int, decay: float, *,
                average_buffers: bool) -> None:
    """``target = d * target + (1 - d) * source`` over the parameters, with the mean-teacher warm-up
    ``d = min(1 - 1 / (iteration + 1), decay)``: iteration 0 copies, so the average never keeps the
    random initialisation. Floating buffers are averaged too when ``average_buffers``; every other
    buffer (and all of them otherwise) is copied from ``source``."""
    d = min(1.0 - 1.0 / (iteration + 1), decay)
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), [s.detach() for s in source.parameters()], 1.0 - d)
        for t, s in zip(target.buffers(), source.buffers()):
            if average_buffers and t.is_floating_point():
                t.mul_(d).add_(s, alpha=1.0 - d)
            else:
                t.copy_(s)


class Trainer:
    """Trains one method on one fold. Plugins never see it: they get a :class:`TrainingContext`."""

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
        self.labelled_cases = labelled_cases(card, config, self.train_cases)  # all of them but under semi
        self.num_classes = dataset.num_classes
        self.channels = card.channels if card.channels is not None else list(range(dataset.num_channels))
        bad = [c for c in self.channels if not 0 <= c < dataset.num_channels]
        if bad:
            raise InputError(card.path, f"channels {bad} not in the dataset's {dataset.num_channels} channels")
        self.channel_names = [dataset.channels[c] for c in self.channels]
        self.normalization = dataset.meta.get("normalization", {})
        # the dataset's declared grid, recorded in model.pt: prediction resamples images far from it
        self.spacing = tuple(float(s) for s in dataset.meta.get("spacing", (1.0, 1.0, 1.0)))
        self.max_iterations = config.total_iterations(len(self.train_cases))
        seed_everything(config.seed)
        self.rng = np.random.default_rng(config.seed)
        try:
            self.model = set_cpu_layout(
                self.method.build_network(len(self.channels), self.num_classes).to(self.device), self.device)
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
        self.teacher = _frozen_copy(self.model) if self.method.teacher_decay is not None else None
        # selection: ema keeps an average of the weights; validation scores it and model.pt holds it
        self.averaged = _frozen_copy(self.model) if config.selection == "ema" else None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = config.cudnn_benchmark
        # the network the training steps call: compiled (same parameters) when asked for
        self.step_model: nn.Module = torch.compile(self.model) if config.compile else self.model
        # float16 autocast needs loss scaling; bfloat16 and float32 do not (the scaler is then a no-op)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=config.amp and amp_dtype(self.device) == torch.float16)
        self.base_lr = config.lr
        self.optimizer = self._make_optimizer()
        self.volumes: dict[str, TrainVolume] = {}
        self.sampler = make_sampler(card, config, self.volumes, self.train_cases, self.labelled_cases, self.rng)
        self.iteration = 0
        self.best = {"score": -1.0, "iteration": -1}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.lr_origin = 0  # iteration at which the current schedule started (reset_optimizer)
        self.state_hash = state_hash(card.to_dict(), config, fold, dataset)
        self._running: dict[str, float] = {}  # sums over the current log window
        self._seconds_before = 0.0  # training time of the runs this one resumes
        self._started = time.time()

    # -- what plugins get ---------------------------------------------------------------------
    def context(self) -> TrainingContext:
        """The plugin's view of this run (see :class:`TrainingContext`)."""
        return TrainingContext(
            max_iterations=self.max_iterations, num_classes=self.num_classes, channel_names=self.channel_names,
            volumes=self.volumes, replace_target=self._replace_target, predict=lambda case: self.predict_probabilities(
                self.volumes[case].image), reset_optimizer=self.reset_optimizer, log=self.log)

    def _replace_target(self, case: str, target: np.ndarray) -> None:
        self.volumes[case].target = target
        self.sampler.forget(case)

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
        return torch.optim.Adam(params, lr=lr, weight_decay=self.config.weight_decay, fused=True)

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
            target = training_target(self.dataset, self.card, case, case in self.labelled_cases, image.shape[1:])
            image, target = pad_volume(image, target, self.config.patch_size)
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
        """Mean foreground Dice of the weights model.pt would keep (the average under ``ema``)."""
        scores = [_dice_foreground(self.predict_probabilities(image, self.averaged).argmax(0).numpy(), reference,
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
                "averaged": self.averaged.state_dict() if self.averaged is not None else None,
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "lr_origin": self.lr_origin,
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
        if self.averaged is not None and state.get("averaged") is not None:
            self.averaged.load_state_dict(state["averaged"])
        self.lr_origin, self.base_lr = state["lr_origin"], state["base_lr"]
        self.optimizer = self._make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])
        self.iteration = state["iteration"]
        self.best, self.best_state = state["best"], state["best_state"]
        if self.best_state is None and self.best["iteration"] == self.iteration and self.config.selection == "best":
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
        context = self.context()
        self.method.setup(context)
        interactive = sys.stderr.isatty()
        bar = tqdm(total=self.max_iterations, initial=self.iteration, disable=not interactive,
                   desc=f"{self.card.id} fold {self.fold}")
        window_start = time.time()
        self.model.train()
        while self.iteration < self.max_iterations:
            images, targets, case_ids, boxes = self.sampler.sample(self.config.batch_size)
            batch = Batch(torch.from_numpy(images).to(self.device),
                          torch.from_numpy(targets.astype(np.int64)).to(self.device), case_ids, boxes,
                          [self.volumes[case].spacing for case in case_ids],
                          torch.tensor([case in self.labelled_cases for case in case_ids], device=self.device))
            lr = self._lr_at(self.iteration)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            step = StepInfo(self.iteration, self.max_iterations, self.teacher)
            with self._autocast():
                loss, parts = self.method.loss(self.step_model, batch, step)
            if not torch.isfinite(loss):
                raise RuntimeError(f"{self.card.id}: non-finite loss at iteration {self.iteration}: {parts}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.teacher is not None:  # a mean teacher: BatchNorm statistics are the student's
                _ema_update(self.teacher, self.model, self.iteration, self.method.teacher_decay, average_buffers=False)
            if self.averaged is not None:  # the model's average, BatchNorm statistics averaged too (timm's ModelEma)
                _ema_update(self.averaged, self.model, self.iteration, self.config.ema_decay, average_buffers=True)
            self.method.after_step(context, self.iteration)
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
                row["val_dice"] = score  # validate_now opened this window's row above
                if self.config.selection != "best" or score > self.best["score"]:
                    self.best = {"score": score, "iteration": self.iteration}
                    if self.config.selection == "best":  # else the final (or averaged) weights are kept
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
        final_model = self.averaged if self.averaged is not None else self.model
        final_state = self.best_state if self.best_state is not None else {
            k: v.detach().cpu() for k, v in final_model.state_dict().items()}
        selected = self.best["iteration"] if self.best_state is not None else self.iteration
        meta = write_trained_model(self.out, final_state, model_meta(
            self.card, self.config, self.dataset, self.fold, self.channels,
            max_iterations=self.max_iterations, train_cases=self.train_cases,
            labelled_cases=self.labelled_cases, val_cases=self.val_cases, spacing=list(self.spacing),
            patch_size=self.config.patch_size, size_divisor=self.size_divisor,
            selection=self.config.selection, selected_iteration=selected,
            selected_val_dice=self.best["score"] if self.best["iteration"] == selected else None,
            seconds=round(seconds, 1), device=str(self.device), state_hash=self.state_hash))
        (self.out / "last.pt").unlink(missing_ok=True)
        score = meta["selected_val_dice"]
        self.log(f"done in {seconds:.0f} s; selected iteration {selected} ({self.config.selection})"
                 + (f", val Dice {score:.4f}" if score is not None else ""))
        return meta
