"""Training cost of every method: seconds per iteration and peak memory, per patch setting.

Each (method, setting) runs in a fresh process through the real engine (so the peak is that
run's own), on a synthetic NPC phantom (8 cases of 32x128x128). Seconds per iteration come from
the engine's own log (the last logged window: the timed iterations after the warm-up, without
the final validation); peak memory is the process's max RSS on CPU and torch's peak allocation
on CUDA. S2L's figure includes its whole-set EMA refreshes (every 5 % of training), so it is only
representative with enough iterations for the refresh period to exceed one iteration.
"""

from __future__ import annotations

import resource
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from cmfnet.bench.common import REPO, in_fresh_process, size_text
from cmfnet.errors import InputError

# train block and network overrides of each setting: the smoke preset, the default preset
# (config/config.yaml: width 8, no dropout), the semi-supervised preset (config/semi.yaml: the
# default's network, batch 4 = 2 labelled + 2 unlabelled patches) and the paper's (the cards' own
# width 16, dropout 0.5)
SETTINGS = {
    "smoke": {"batch_size": 1, "patch_size": [16, 32, 32]},
    "default": {"batch_size": 2, "patch_size": [16, 32, 32]},
    "semi": {"batch_size": 4, "patch_size": [16, 32, 32], "labelled_fraction": 0.25},
    "paper": {"batch_size": 16, "patch_size": [16, 96, 96]},
}
PRESET_NETWORK = ["network.width=8", "network.dropout=0.0"]  # config/config.yaml's network: block
NETWORK = {"default": PRESET_NETWORK, "semi": PRESET_NETWORK}
TABLE1 = ("fullysup", "pce", "dmsps", "em", "tv", "ms", "ustm", "s2l", "cmfnet_autobg", "cmfnet")
DEFAULT_SETTINGS = ("smoke", "paper")


def run_one(methods_dir: Path, method: str, setting: str, iterations: int, warmup: int, dataset: Path,
            device: str, threads: int | None) -> dict[str, object]:
    """Train ``method`` for ``warmup + iterations`` iterations in this process and read its cost."""
    from cmfnet.data.dataset import Dataset
    from cmfnet.training.cards import card_path_for_id, load_card
    from cmfnet.training.config import TrainConfig
    from cmfnet.training.engine import Trainer

    if threads:
        torch.set_num_threads(threads)
    path, variant, _ = card_path_for_id(methods_dir, method)
    card = load_card(path, NETWORK.get(setting, []), variant=variant)
    config = TrainConfig(iterations=warmup + iterations, log_interval=warmup, val_interval=0,
                         checkpoint_interval=10**9, **SETTINGS[setting])
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(card, Dataset(dataset), 0, Path(out), config, device=device)
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.fit()
        log = pd.read_csv(Path(out) / "train_log.csv")
    cuda = trainer.device.type == "cuda"
    return {"device": str(trainer.device), "sec_per_it": float(log["sec_per_it"].iloc[-1]),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan"),
            "threads": torch.get_num_threads()}


def benchmark(methods: Sequence[str] = TABLE1, settings: Sequence[str] = DEFAULT_SETTINGS, iterations: int = 3,
              warmup: int = 2, device: str = "auto", threads: int | None = None,
              methods_dir: Path = REPO / "methods") -> list[dict[str, object]]:
    """One row per (setting, method); a run that fails gives a row with its error, not numbers."""
    from cmfnet.data.scribbles import make_scribbles
    from cmfnet.data.synth import synthesize

    if warmup < 1:
        raise InputError("--warmup", "must be at least 1 (the log window that times the iterations starts after it)")
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = synthesize("npc", 8, Path(tmp) / "npc", seed=0, shape=(32, 128, 128))
        for variant in ("sim", "autobg"):
            make_scribbles(dataset, variant, seed=0)
        for setting in settings:
            for method in methods:
                row: dict[str, object] = {"benchmark": "training", "method": method, "setting": setting,
                                          "batch": SETTINGS[setting]["batch_size"],
                                          "patch": size_text(SETTINGS[setting]["patch_size"]),
                                          "iterations": iterations, "warmup": warmup}
                try:
                    row.update(in_fresh_process(run_one, methods_dir, method, setting, iterations, warmup, dataset,
                                                device, threads), status="ok")
                except InputError:
                    raise
                except Exception as err:  # one method's failure must not lose the others' numbers
                    row.update(device=device, status=f"failed: {type(err).__name__}: {err}"[:300])
                rows.append(row)
                print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      flush=True)
    return rows
