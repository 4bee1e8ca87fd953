"""The one-shot GPU check runs end to end in its CPU dry mode and writes its three tables, through
`cmfnet bench` (its own tests: test_bench.py)."""

from __future__ import annotations

import importlib
import os
import subprocess
from pathlib import Path

import numpy as np
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


def test_crf_gating_tells_a_visible_boundary_from_an_invisible_one() -> None:
    """benchmarks/crf_gating.py's numbers in docs/ablations.md: a step of 1.0 at σ_I = 0.1 is
    gated (kernel ~0 across it), no step is not (the same weight across as inside)."""
    import sys
    sys.path.insert(0, str(REPO / "benchmarks"))
    import crf_gating
    mask = np.zeros((4, 12, 12), bool)
    mask[1:3, 4:8, 4:8] = True
    contrast, across, inside = crf_gating.gating(mask.astype(np.float32), mask, 0.1, ring=2, stride=1)
    assert contrast == pytest.approx(1.0) and across == pytest.approx(0.0, abs=1e-12) and inside == 1.0
    contrast, across, inside = crf_gating.gating(np.zeros(mask.shape, np.float32), mask, 0.1, ring=2, stride=1)
    assert contrast == 0.0 and across == inside == 1.0
    half = 0.1 * mask.astype(np.float32)  # a step of one σ_I: exp(-1/2)
    assert crf_gating.gating(half, mask, 0.1, ring=2, stride=1)[1] == pytest.approx(np.exp(-0.5))
