"""``cmfnet train``: one method (card) on one fold, resumable, refusing to overwrite another training."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from cmfnet.data.io import counted
from cmfnet.data.dataset import Dataset
from cmfnet.errors import InputError
from cmfnet.training.cards import load_card
from cmfnet.training.config import resolve_train_config
from cmfnet.training.device import add_threads_argument, set_cpu_threads
from cmfnet.training.contract import ExternalMethod
from cmfnet.training.engine import Trainer
from cmfnet.training.external import external_state_hash, fit_external
from cmfnet.training.model import read_model_file
from cmfnet.training.plugins import load_method


def _finished_already(out: Path, state_hash: str, force: bool) -> bool:
    """Whether ``model.pt`` already holds this very training (nothing to do); refuse another one's."""
    path = out / "model.pt"
    if force or not path.exists():
        return False
    try:
        meta = read_model_file(path)["meta"]
    except InputError as err:
        raise InputError(path, f"{err.problem}; --force retrains over it") from None
    if meta.get("state_hash") != state_hash:
        raise InputError(path, "exists and was trained with another card, train config, fold or dataset; "
                               "--force retrains over it")
    return True


def _read_train_block(text: str) -> dict[str, Any]:
    """One --train-config value: a preset file's `train:` block, or a JSON object."""
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(Path(text).read_text())
    except (json.JSONDecodeError, yaml.YAMLError, OSError) as err:
        raise InputError(text[:80], f"cannot read train config ({err})") from None
    block = data.get("train", data) if isinstance(data, dict) else data
    if not isinstance(block, dict):
        raise InputError(text[:80], "a train config must be a mapping (optionally under 'train:')")
    return block


def layered_train_block(sources: list[str]) -> dict[str, Any]:
    """The train blocks of several presets, later ones over earlier ones (Snakemake's order)."""
    block: dict[str, Any] = {}
    for source in sources:
        block.update(_read_train_block(source))
    return block


def run(args: argparse.Namespace) -> int:
    card = load_card(args.card, args.set or (), args.variant)
    sources = args.train_config or []
    config = resolve_train_config(card, layered_train_block(sources), " + ".join(sources) or "train config")
    if args.out.exists() and not args.out.is_dir():
        raise InputError(args.out, "--out is an existing file, not a folder")
    set_cpu_threads(args.threads)
    dataset = Dataset(args.dataset)
    method = load_method(card)
    if isinstance(method, ExternalMethod):  # a framework trains it (nnU-Net), not the engine
        if _finished_already(args.out, external_state_hash(method, config, args.fold, dataset), args.force):
            print(f"{args.out / 'model.pt'} exists and was trained with this card, config, fold and dataset: "
                  "nothing to do (--force retrains)")
            return 0
        meta = fit_external(method, dataset, args.fold, args.out, config, device=args.device)
        print(f"trained {card.id} fold {args.fold} in {meta['seconds']} s -> {args.out / 'model.pt'}")
        return 0
    trainer = Trainer(card, dataset, args.fold, args.out, config, device=args.device)
    if _finished_already(trainer.out, trainer.state_hash, args.force):
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
    parser.add_argument("--train-config", action="append",
                        help="a preset's train block: a YAML file with a 'train:' mapping or a JSON object; "
                             "repeat it to layer presets as Snakemake does (config/config.yaml, then "
                             "config/smoke.yaml)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a card field, e.g. train.iterations=3 or params.weight=0.1")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    add_threads_argument(parser)
    parser.add_argument("--force", action="store_true",
                        help="retrain even if OUT/model.pt exists (it is replaced when training completes)")
    parser.set_defaults(func=run)

