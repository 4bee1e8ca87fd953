"""The one-shot GPU check runs end to end in its CPU dry mode and writes its three tables, through
`cmfnet bench` (its own tests: test_bench.py)."""

from __future__ import annotations

import importlib
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


@pytest.mark.slow
def test_gpu_check_dry_mode_writes_the_training_crf_and_inference_tables(tmp_path: Path) -> None:
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OUT_DIR": str(tmp_path)}, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    training = pd.read_csv(tmp_path / "gpu_training.csv")
    assert sorted(training["method"]) == ["cmfnet", "pce"] and (training["sec_per_it"] > 0).all()
    crf = pd.read_csv(tmp_path / "gpu_crf.csv")
    assert (crf["device"] == "cpu").all() and (crf["status"] == "ok").all() and (crf["wall_s"] > 0).all()
    if importable("unfoldNd"):  # the bench extra: ours against the unfold reference
        assert list(crf["implementation"]) == ["ours", "unfold"]
        assert crf["rel_diff_loss"].iloc[1] < 1e-4  # the same energy, float32
    else:  # without it the dry mode says so and measures ours alone
        assert list(crf["implementation"]) == ["ours"] and "unfoldNd missing" in done.stdout
    inference = pd.read_csv(tmp_path / "gpu_inference.csv")
    assert sorted(inference["method"]) == ["cmfnet", "pce"] and (inference["seconds"] > 0).all()
    assert set(inference["shape"]) == {"16x64x64"}
    for table in (training, crf, inference):
        assert {"platform", "cpu_model", "gpu", "torch_version", "commit"} <= set(table.columns)
