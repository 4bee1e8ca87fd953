"""`cmfnet bench`: the unfold reference CRF computes our energy, the metric comparison finds equal
values where the definitions agree, every CSV row names the machine, and a missing library of the
bench extra is one line with exit 2. Tiny sizes only; the optional libraries skip cleanly."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cmfnet import cli
from cmfnet.bench.common import MACHINE_COLUMNS, REPO
from cmfnet.training.losses.crf import VIEWS, gated_crf_loss, multiview_crf_loss

SPACING = (3.0, 1.27, 0.9)  # anisotropic in every view, so a kernel taken in voxels would differ


def brute_force_crf(probs: np.ndarray, features: np.ndarray, spacing: tuple[float, ...], radius: int,
                    sigma_xy: float, sigma_i: float, view: str) -> np.ndarray:
    """The energy straight from its definition: every ordered pair of distinct voxels of one slice
    of the view within the (2r+1)^2 window; one loss per feature channel."""
    batch, _, *grid = probs.shape
    axes = VIEWS[view]
    third = ({0, 1, 2} - set(axes)).pop()
    total = np.zeros(features.shape[1])
    for b in range(batch):
        for i, j in itertools.product(np.ndindex(*grid), repeat=2):
            offset = np.subtract(j, i)
            if i == j or offset[third] != 0 or np.abs(offset).max() > radius:
                continue
            spatial = np.exp(-0.5 * np.sum((offset * spacing) ** 2) / sigma_xy ** 2)
            intensity = np.exp(-0.5 * ((features[(b, slice(None), *i)] - features[(b, slice(None), *j)])
                                       / sigma_i) ** 2)
            total += spatial * intensity * (1.0 - probs[(b, slice(None), *i)] @ probs[(b, slice(None), *j)])
    return total / (batch * np.prod(grid))


@pytest.mark.parametrize("view", list(VIEWS))
def test_the_unfold_reference_and_ours_compute_the_crf_energy_of_its_definition(view: str) -> None:
    """Value and gradient, per view, against a brute-force sum over voxel pairs (float64, 3x4x5)."""
    pytest.importorskip("unfoldNd")
    from cmfnet.bench.crf import unfold_gated_crf_loss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 3, 4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    features = 0.1 * torch.randn(2, 2, 3, 4, 5, generator=generator, dtype=torch.float64)
    probs = torch.softmax(logits, 1)
    expected = brute_force_crf(probs.detach().numpy(), features.numpy(), SPACING, 2, 4.0, 0.1, view)
    ours = gated_crf_loss(probs, features, SPACING, radius=2, sigma_xy_mm=4.0, views=[view])
    reference = unfold_gated_crf_loss(probs, features, SPACING, radius=2, sigma_xy_mm=4.0, views=[view])
    np.testing.assert_allclose(reference.detach().numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(ours.detach().numpy(), expected, rtol=1e-10)
    weights = torch.tensor([0.3, 1.0], dtype=torch.float64)  # unequal, so each kernel's gradient counts
    (ours_grad,) = torch.autograd.grad((weights * ours).sum(), logits, retain_graph=True)  # shares the softmax
    (reference_grad,) = torch.autograd.grad((weights * reference).sum(), logits)
    torch.testing.assert_close(reference_grad, ours_grad, rtol=1e-9, atol=1e-12)


def test_the_unfold_multiview_loss_equals_ours_with_downsampling_and_the_default_kernels() -> None:
    pytest.importorskip("unfoldNd")
    from cmfnet.bench.crf import unfold_multiview_crf_loss

    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 2, 5, 14, 13, generator=generator, dtype=torch.float64, requires_grad=True)
    image = 0.1 * torch.randn(2, 2, 5, 14, 13, generator=generator, dtype=torch.float64)
    ours = multiview_crf_loss(logits, image, SPACING, (1, 2, 2), radius=3)
    reference = unfold_multiview_crf_loss(logits, image, SPACING, (1, 2, 2), radius=3)
    torch.testing.assert_close(reference, ours, rtol=1e-10, atol=0)
    (ours_grad,) = torch.autograd.grad(ours.sum(), logits)
    (reference_grad,) = torch.autograd.grad(reference.sum(), logits)
    torch.testing.assert_close(reference_grad, ours_grad, rtol=1e-9, atol=1e-12)


def test_the_metric_comparison_finds_equal_values_where_the_definitions_agree() -> None:
    for module in ("medpy", "monai", "surface_distance"):
        pytest.importorskip(module)
    from cmfnet.bench.metrics import SPACING as CT_SPACING, compare_case, synthetic_case

    pred, ref = synthetic_case((16, 64, 64), seed=0, with_organ=True)
    rows = {row["library"]: row for row in compare_case(pred, ref, CT_SPACING, ["medpy", "monai", "deepmind"])}
    assert all(row["classes"] == 3 and row["seconds"] > 0 for row in rows.values())
    assert rows["medpy"]["max_abs_diff_same_definition"] == pytest.approx(0, abs=1e-9)
    assert rows["monai"]["max_abs_diff_same_definition"] < 1e-4  # MONAI's distances are float32
    assert rows["deepmind"]["max_abs_diff_dsc"] < 1e-12
    # where a definition differs, the columns show it: MONAI's per-direction HD95, DeepMind's surfels
    assert rows["monai"]["max_abs_diff_hd95"] > 0.01
    assert min(rows["deepmind"][f"max_abs_diff_{m}"] for m in ("asd", "assd", "hd95", "nsd")) > 0.01
    assert np.isnan(rows["medpy"]["max_abs_diff_nsd"])  # medpy has no NSD


def test_every_csv_row_names_the_machine_the_versions_and_the_commit(tmp_path: Path) -> None:
    pytest.importorskip("medpy")
    assert cli.main(["bench", "metrics", "--cases", "1", "--shape", "16", "64", "64", "--libraries", "medpy",
                     "--out", str(tmp_path)]) == 0
    assert cli.main(["bench", "crf", "--implementations", "ours", "--devices", "cpu", "--batch", "1",
                     "--patch", "4", "16", "16", "--radius", "2", "--out", str(tmp_path), "--prefix", "x_"]) == 0
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    for name in ("metrics.csv", "x_crf.csv"):
        table = pd.read_csv(tmp_path / name)
        assert set(MACHINE_COLUMNS) <= set(table.columns) and not table[list(MACHINE_COLUMNS)].isna().any().any()
        assert (table["cpu_count"] == os.cpu_count()).all()
        assert (table["torch_version"] == torch.__version__).all()
        assert (table["commit"] == (commit.stdout.strip() or "unknown")).all()
        if not torch.cuda.is_available():
            assert (table["gpu"] == "none").all()
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics["case"].astype(str)) == ["0", "all"] and (metrics["library"] == "medpy").all()
    crf = pd.read_csv(tmp_path / "x_crf.csv")
    assert list(crf["implementation"]) == ["ours"] and (crf["status"] == "ok").all() and (crf["wall_s"] > 0).all()


@pytest.mark.parametrize(("command", "module", "distribution"), [
    (["crf", "--devices", "cpu"], "unfoldNd", "unfoldNd"),
    (["metrics", "--libraries", "monai"], "monai", "monai"),
    (["metrics", "--libraries", "deepmind"], "surface_distance", "surface-distance-based-measures"),
    (["all"], "surface_distance", None),  # all checks the whole extra before it starts
])
def test_a_missing_optional_package_is_one_line_and_exit_2(
        command: list[str], module: str, distribution: str | None, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")] or [module]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    assert cli.main(["bench", *command, "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cmfnet bench: error: ")
    assert "pip install -e '.[bench]'" in lines[0] and (distribution is None or distribution in lines[0])
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written
