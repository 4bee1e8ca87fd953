"""Training cost of every method: seconds per iteration and peak memory, per patch setting.

Not a test. Each (method, setting) runs in its own process through the real engine (so peak RSS
is that run's own), on a synthetic NPC phantom:

    python benchmarks/bench_training.py                      # all Table I methods, smoke + paper
    python benchmarks/bench_training.py --methods pce cmfnet --settings paper --iterations 3

Seconds per iteration come from the engine's own log (the last logged window, which excludes
validation); peak memory is the process's max RSS on CPU and torch's peak allocation on CUDA.
S2L's figure includes its whole-set EMA refreshes (every 5% of training), so it is only
representative with enough iterations for the refresh period to exceed one iteration.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "smoke": {"batch_size": 1, "patch_size": [16, 32, 32]},
    "default": {"batch_size": 2, "patch_size": [16, 64, 64]},
    "paper": {"batch_size": 16, "patch_size": [16, 96, 96]},
}
TABLE1 = ["fullysup", "pce", "dmsps", "em", "tv", "ms", "ustm", "s2l", "cmfnet_autobg", "cmfnet"]


def run_one(method: str, setting: str, iterations: int, dataset: Path, device: str,
            threads: int | None, warmup: int) -> dict[str, object]:
    from cmfnet.training.engine import Trainer
    from cmfnet.training.config import TrainConfig
    from cmfnet.data.dataset import Dataset
    from cmfnet.training.cards import card_path_for_id, load_card

    if threads:
        torch.set_num_threads(threads)
    path, variant, _ = card_path_for_id(REPO / "methods", method)
    card = load_card(path, variant=variant)
    config = TrainConfig(iterations=warmup + iterations, log_interval=warmup, val_interval=0,
                         checkpoint_interval=10**9, **SETTINGS[setting])
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(card, Dataset(dataset), 0, Path(out), config, device=device)
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.fit()
        log = pd.read_csv(Path(out) / "train_log.csv")
    peak_cpu_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_gpu_mib = torch.cuda.max_memory_allocated() / 2**20 if trainer.device.type == "cuda" else None
    return {"method": method, "setting": setting, "device": str(trainer.device),
            "batch": SETTINGS[setting]["batch_size"], "patch": "x".join(map(str, SETTINGS[setting]["patch_size"])),
            "sec_per_it": round(float(log["sec_per_it"].iloc[-1]), 3),
            "peak_rss_mib": round(peak_cpu_mib), "peak_gpu_mib": round(peak_gpu_mib) if peak_gpu_mib else None,
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=TABLE1)
    parser.add_argument("--settings", nargs="+", default=["smoke", "paper"], choices=list(SETTINGS))
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads per run (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="also write the table as CSV here")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "SETTING"), help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.iterations, args.dataset, args.device,
                                 args.threads, args.warmup)))
        return
    from cmfnet.data.scribbles import make_scribbles
    from cmfnet.data.synth import synthesize

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = synthesize("npc", 8, Path(tmp) / "npc", seed=0, shape=(32, 128, 128))
        for variant in ("sim", "autobg"):
            make_scribbles(dataset, variant, seed=0)
        for setting in args.settings:
            for method in args.methods:
                cmd = [sys.executable, __file__, "--one", method, setting, "--dataset", str(dataset),
                       "--iterations", str(args.iterations), "--warmup", str(args.warmup), "--device", args.device]
                cmd += ["--threads", str(args.threads)] if args.threads else []
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{method} {setting}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                    continue
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False) if hasattr(table, "to_markdown") else table.to_string(index=False))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
