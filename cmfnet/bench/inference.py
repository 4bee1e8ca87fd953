"""Inference cost of a whole volume: sliding-window prediction time and peak memory.

Builds a method's network as the paper preset does (width 16, 16x96x96 windows, overlap 0.5,
Gaussian blending, 16 windows per forward pass, bfloat16 on CUDA), untrained, and segments one
random two-channel volume (default 150 x 512 x 512, a full-field CT) through the same code as
``cmfnet predict`` (``sliding_window_probabilities`` and the method's logits). Each method runs in
a fresh process; peak memory is torch's peak allocation on CUDA and the process's max RSS on CPU.
The weights are random, so the time is the time of any trained model of that card.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from cmfnet.bench.common import REPO, in_fresh_process, size_text
from cmfnet.errors import InputError

FULL_CT = (150, 512, 512)
METHODS = ("cmfnet", "pce")


def run_one(methods_dir: Path, method_id: str, shape: tuple[int, int, int], patch: tuple[int, int, int], batch: int,
            overlap: float, device_name: str, threads: int | None) -> dict[str, object]:
    """Segment one random volume with ``method_id``'s untrained network in this process."""
    from cmfnet.training.cards import card_path_for_id, load_card
    from cmfnet.training.device import mixed_precision, resolve_device
    from cmfnet.training.plugins import load_method
    from cmfnet.training.sliding_window import sliding_window_probabilities

    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device_name)
    path, variant, _ = card_path_for_id(methods_dir, method_id)
    method = load_method(load_card(path, ["network.width=16"], variant=variant))
    model = method.build_network(2, 2).to(device).eval()
    image = torch.randn((2, *shape), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with mixed_precision(device, True):
            return method.logits(model, x).float()

    start = time.perf_counter()
    with torch.no_grad():
        labels = sliding_window_probabilities(image, predictor, patch, 2, overlap=overlap, batch_size=batch,
                                              divisor=int(getattr(model, "size_divisor", 16))).argmax(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if tuple(labels.shape) != tuple(shape):
        raise RuntimeError(f"prediction shape {tuple(labels.shape)} != volume shape {shape}")
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    return {"device": str(device), "seconds": seconds, "peak_mib": peak, "threads": torch.get_num_threads()}


def benchmark(methods: Sequence[str] = METHODS, shape: tuple[int, int, int] = FULL_CT,
              patch: tuple[int, int, int] = (16, 96, 96), batch: int = 16, overlap: float = 0.5,
              device: str = "auto", threads: int | None = None,
              methods_dir: Path = REPO / "methods") -> list[dict[str, object]]:
    """One row per method; a run that fails gives a row with its error, not numbers."""
    rows: list[dict[str, object]] = []
    for method in methods:
        row: dict[str, object] = {"benchmark": "inference", "method": method, "shape": size_text(shape),
                                  "patch": size_text(patch), "window_batch": batch, "overlap": overlap}
        try:
            row.update(in_fresh_process(run_one, methods_dir, method, shape, patch, batch, overlap, device, threads),
                       status="ok")
        except InputError:
            raise
        except Exception as err:  # one method's failure must not lose the others' numbers
            row.update(device=device, status=f"failed: {type(err).__name__}: {err}"[:300])
        rows.append(row)
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return rows
