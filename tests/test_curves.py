"""The convergence verdict follows its stated rule, and the curves command reads logs only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cmfnet.errors import InputError
from cmfnet.evaluation.curves import last_quarter_trend, write_curves

ITERATIONS = np.arange(50, 801, 50)


def write_log(models: Path, method: str, seed: int, fold: int, val: np.ndarray) -> Path:
    path = models / method / f"seed{seed}" / f"fold{fold}" / "train_log.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame({"iteration": ITERATIONS, "lr": 1e-3, "loss": np.linspace(1, 0.2, ITERATIONS.size),
                  "ce": np.linspace(1, 0.2, ITERATIONS.size), "sec_per_it": 0.1, "val_dice": val}).to_csv(path, index=False)
    return path


def test_trend_is_the_fitted_change_over_the_last_quarter() -> None:
    dice = 0.3 + 0.001 * ITERATIONS  # a straight line: the change over 600..800 is exactly 0.2
    change, spread, points = last_quarter_trend(ITERATIONS, dice, 800)
    assert points == 5 and change == pytest.approx(0.2) and spread == pytest.approx(0.2)


def test_noise_around_a_plateau_converges_and_a_rising_curve_does_not(tmp_path: Path) -> None:
    """Method a: alternating +-0.1 around 0.6 in each fold, anti-phase across folds (the mean is flat);
    method b: still rising 0.1 per 200 iterations in the last quarter."""
    wiggle = np.where(np.arange(ITERATIONS.size) % 2 == 0, 0.1, -0.1)
    files = [write_log(tmp_path, "a", 0, 0, 0.6 + wiggle), write_log(tmp_path, "a", 0, 1, 0.6 - wiggle),
             write_log(tmp_path, "b", 0, 0, 0.0005 * ITERATIONS), write_log(tmp_path, "b", 1, 0, 0.0005 * ITERATIONS)]
    table = write_curves(files, tmp_path / "out" / "convergence", tmp_path / "out" / "curves.png", 0.05, ["b", "a"])
    mean = table[table["scope"] == "mean"].set_index("method")
    assert list(mean.index) == ["b", "a"]
    assert mean.loc["a", "converged"] and mean.loc["a", "last_quarter_change"] == pytest.approx(0.0, abs=1e-9)
    assert not mean.loc["b", "converged"] and mean.loc["b", "last_quarter_change"] == pytest.approx(0.1)
    runs = table[(table["scope"] == "run") & (table["method"] == "a")]
    assert len(runs) == 2 and runs["last_quarter_range"].tolist() == pytest.approx([0.2, 0.2])
    assert set(table[table["method"] == "b"]["seed"]) >= {0, 1}
    markdown = (tmp_path / "out" / "convergence.md").read_text()
    assert "| a | 800 | 5 | +0.000 |" in markdown and "| b | 800 | 5 | +0.100 |" in markdown and "**no**" in markdown
    assert (tmp_path / "out" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_heads_in_the_order_place_their_model_where_the_first_head_stands(tmp_path: Path) -> None:
    """A table order names rows, and heads (`<id>@<head>`) of one model are several rows: the
    curves put that model's log at its first head's place, not after every ordered method."""
    files = [write_log(tmp_path, name, 0, 0, 0.5 + 0.0 * ITERATIONS) for name in ("a", "s.v1", "z")]
    order = ["z", "s.v1@mm", "s.v1@ct", "a"]
    table = write_curves(files, tmp_path / "out" / "convergence", tmp_path / "out" / "curves.png", 0.05, order)
    assert list(table[table["scope"] == "mean"]["method"]) == ["z", "s.v1", "a"]


def test_a_log_outside_the_layout_is_refused(tmp_path: Path) -> None:
    stray = tmp_path / "train_log.csv"
    pd.DataFrame({"iteration": [1], "val_dice": [0.1]}).to_csv(stray, index=False)
    with pytest.raises(InputError, match="seed<s>/fold<f>"):
        write_curves([stray], tmp_path / "c", tmp_path / "c.png")


def test_command_names_a_corrupt_log_and_exits_2(tmp_path: Path) -> None:
    log = write_log(tmp_path, "a", 0, 0, np.full(ITERATIONS.size, 0.5))
    log.write_bytes(b"\xff\xfe\x00garbage")
    result = subprocess.run([sys.executable, "-m", "cmfnet.cli", "curves", "--models", str(tmp_path),
                             "--out-table", str(tmp_path / "c"), "--out-figure", str(tmp_path / "c.png")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and str(log) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.csv").exists()
