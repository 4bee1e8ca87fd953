"""How CmFNet's three heads start: per-head foreground statistics over the first iterations.

A study script (docs/cmfnet.md, "Seed dependence"): trains the CmFNet card through the real
engine on one fold, with the default preset's train block, and prints every ``--every``
iterations, for y_ct, y_mr and y_mm on the training batch: the fraction of patch voxels called
tumour, and the mean tumour probability on background-scribbled and on tumour-scribbled voxels.
The statistics come from the training step's own forward pass (a forward hook), so the run is
the same training as the pipeline's. Nothing is written outside ``--out``.

    python benchmarks/cmfnet_start.py --dataset results/data/synth-npc --seed 1 --iterations 200
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from cmfnet.data.dataset import Dataset
from cmfnet.training.cards import load_card
from cmfnet.training.config import resolve_train_config
from cmfnet.training.engine import Trainer
from cmfnet.training.train import layered_train_block

HEADS = ("y_ct", "y_mr", "y_mm")


def head_statistics(out: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, tuple[float, float, float]]:
    """Per head: tumour fraction of the patch, mean p(tumour) on background and on tumour scribbles."""
    stats = {}
    for head in HEADS:
        p_fg = torch.softmax(out[head].detach().float(), dim=1)[:, 1]
        on = [float(p_fg[target == label].mean()) if (target == label).any() else float("nan") for label in (0, 1)]
        stats[head] = (float((p_fg > 0.5).float().mean()), on[0], on[1])
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--card", default="methods/cmfnet.yaml")
    parser.add_argument("--preset", default="config/config.yaml", help="the train: block to use")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="training folder (default: a temporary one)")
    args = parser.parse_args()

    card = load_card(args.card, ["network.width=8", "network.dropout=0.0"], None)
    block = layered_train_block([args.preset]) | {"seed": args.seed, "iterations": args.iterations,
                                                  "val_interval": 0, "selection": "last"}
    config = resolve_train_config(card, block, args.preset)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(card, Dataset(args.dataset), args.fold, args.out or Path(scratch), config, device="cpu")
        step = {"i": 0}
        original_loss = trainer.method.loss

        def loss(model, batch, info):  # type: ignore[no-untyped-def]
            step["i"], step["target"] = info.iteration, batch.target
            return original_loss(model, batch, info)

        def report(_module, _inputs, out):  # type: ignore[no-untyped-def]
            if trainer.model.training and step["i"] % args.every == 0:
                cells = "  ".join(f"{h} fg {f:.2f} p|bg {b:.2f} p|tumour {t:.2f}"
                                  for h, (f, b, t) in head_statistics(out, step["target"]).items())
                print(f"it {step['i']:4d}  {cells}", flush=True)

        trainer.method.loss = loss  # type: ignore[method-assign]
        trainer.model.register_forward_hook(report)
        trainer.fit()


if __name__ == "__main__":
    main()
