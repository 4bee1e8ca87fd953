"""Inference cost of a whole volume: sliding-window prediction time and peak memory.

Not a test. Builds a method's network as the paper preset does (width 16, 16x96x96 windows,
overlap 0.5, Gaussian blending, batch 16 windows, bfloat16 on CUDA), untrained, and segments one
random two-channel volume of the given shape (default 150 x 512 x 512, a full-field CT), through
the same code as ``cmfnet predict`` (``sliding_window_probabilities`` and the method's logits):

    python benchmarks/bench_inference.py --methods cmfnet pce --device cuda --out results/benchmarks/inference.csv

Peak memory is torch's peak allocation on CUDA and the process's max RSS on CPU. The weights are
random, so the time is the time of any trained model of that card.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import pandas as pd
import torch

from cmfnet.training.cards import card_path_for_id, load_card
from cmfnet.training.device import mixed_precision, resolve_device
from cmfnet.training.plugins import load_method
from cmfnet.training.sliding_window import sliding_window_probabilities

REPO = Path(__file__).resolve().parents[1]


def run_one(method_id: str, shape: tuple[int, int, int], patch: tuple[int, int, int], batch: int,
            overlap: float, device: torch.device) -> dict[str, object]:
    path, variant, _ = card_path_for_id(REPO / "methods", method_id)
    card = load_card(path, ["network.width=16"], variant=variant)
    method = load_method(card)
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
    assert labels.shape == shape
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    return {"method": method_id, "device": str(device), "shape": "x".join(map(str, shape)),
            "patch": "x".join(map(str, patch)), "window_batch": batch, "overlap": overlap,
            "seconds": round(seconds, 2), "peak_mib": round(peak), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else ""}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["cmfnet", "pce"])
    parser.add_argument("--shape", type=int, nargs=3, default=[150, 512, 512], metavar=("Z", "Y", "X"))
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 96, 96], metavar=("Z", "Y", "X"))
    parser.add_argument("--batch", type=int, default=16, help="windows per forward pass")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, help="also write the table as CSV here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    rows = [run_one(m, tuple(args.shape), tuple(args.patch), args.batch, args.overlap, device) for m in args.methods]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
