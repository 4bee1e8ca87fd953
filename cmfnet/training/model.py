"""``model.pt``: its format, its checks, and :class:`TrainedModel`, a trained model ready to segment.

The engine and external frameworks write the file (:func:`write_trained_model`, with the record
of :func:`model_meta`); ``cmfnet predict`` reads it. All go through here, so the format is
defined in one place.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmfnet import __version__
from cmfnet.data.dataset import Dataset
from cmfnet.data.io import atomic_path, write_json
from cmfnet.data.normalize import normalize_image
from cmfnet.errors import InputError
from cmfnet.training.cards import Card, parse_override
from cmfnet.training.config import TrainConfig
from cmfnet.training.contract import ExternalMethod, Method
from cmfnet.training.device import mixed_precision, set_cpu_layout
from cmfnet.training.plugins import load_method
from cmfnet.training.sliding_window import sliding_window_probabilities


#: layout version of model.pt and last.pt; a file with another version is refused (model.pt) or
#: not resumed from (last.pt). Raise it whenever what the files hold changes incompatibly.
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """Versions recorded with every model and results row."""
    import SimpleITK

    return {"cmfnet": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "cuda": torch.version.cuda or "none", "numpy": np.__version__,
            "simpleitk": SimpleITK.Version.VersionString()}


def model_meta(card: Card, config: TrainConfig, dataset: Dataset, fold: int, channels: list[int],
               **fields: Any) -> dict[str, Any]:
    """``meta.json``'s record of one training: what every trainer states alike, then ``fields``
    (cases, selection, spacing, ...) that only the trainer knows. One builder for the engine and
    external frameworks, so ``cmfnet predict`` and the tables read one schema."""
    return {"card": card.to_dict(), "card_path": str(card.path), "method_id": card.id,
            "train": config.settings(), "fold": fold, "dataset": dataset.name,
            "dataset_path": str(dataset.root), "num_classes": dataset.num_classes, "channels": channels,
            "channel_names": [dataset.channels[c] for c in channels],
            "normalization": dataset.meta.get("normalization", {}), "seed": config.seed,
            "versions": versions(), "format": FORMAT_VERSION} | fields


def write_trained_model(out: Path, weights: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``meta.json`` and ``model.pt`` atomically; return the meta as stored. Plain JSON types
    only, so the file loads with ``weights_only=True``."""
    meta = json.loads(json.dumps(meta))
    write_json(meta, out / "meta.json")
    with atomic_path(out / "model.pt") as tmp:
        torch.save({"format": FORMAT_VERSION, "meta": meta,
                    "weights": {k: v.detach().cpu() for k, v in weights.items()}}, tmp)
    return meta


# what TrainedModel needs from model.pt's meta (older files may lack some)
MODEL_META_KEYS = ("card", "card_path", "channels", "channel_names", "num_classes", "normalization",
                   "patch_size", "size_divisor", "train", "fold")


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
            if isinstance(method, ExternalMethod):  # the network its framework planned (meta["external"])
                model = method.build_predictor_network(meta.get("external") or {})
            else:
                model = method.build_network(len(meta["channels"]), meta["num_classes"])
        except (ValueError, TypeError, KeyError) as err:
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

    @property
    def resamples_itself(self) -> bool:
        """Whether the model's framework resamples images to its own spacing (an external method):
        ``cmfnet predict`` then hands it each image at its own spacing."""
        return isinstance(self.method, ExternalMethod)

    @torch.no_grad()
    def segment(self, image: np.ndarray, device: torch.device, overlap: float = 0.5,
                spacing: tuple[float, ...] | None = None) -> np.ndarray:
        """Label map (uint8) of a raw (C, z, y, x) image with all of the dataset's channels.

        ``spacing`` (z, y, x mm), the image's own, is needed by a model that resamples itself.
        """
        channels = self.meta["channels"]
        names = self.meta["channel_names"]
        if image.shape[0] <= max(channels):
            raise InputError(self.path, f"image has {image.shape[0]} channels, model uses {channels}")
        if isinstance(self.method, ExternalMethod):
            if spacing is None:
                raise ValueError("an external model segments at the image's spacing: pass spacing")
            return self.method.segment(self.model, np.ascontiguousarray(image[channels]),
                                       tuple(float(s) for s in spacing), self.meta.get("external") or {},
                                       device, overlap)
        selected = normalize_image(image[channels], names, self.meta["normalization"])
        set_cpu_layout(self.model.to(device), device)
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

