"""CUDA paths: training, prediction and the CRF on a GPU agree with the CPU. Skipped without CUDA.

``benchmarks/gpu_check.sh`` runs these on a GPU machine (CI has none).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cmfnet.data.dataset import Dataset
from cmfnet.training.cards import load_card
from cmfnet.training.config import TrainConfig
from cmfnet.training.engine import Trainer
from cmfnet.training.losses.crf import multiview_crf_loss
from cmfnet.training.model import TrainedModel

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["pce", "cmfnet"])
def test_training_on_cuda_runs_in_mixed_precision_and_its_model_segments_on_both_devices(
        method: str, tmp_path: Path, tiny_dataset: Path) -> None:
    card = load_card(REPO / "methods" / f"{method}.yaml", ["network.width=4"])
    config = TrainConfig(iterations=4, batch_size=2, patch_size=[16, 32, 32], val_interval=2,
                         checkpoint_interval=2, log_interval=2, selection="ema")
    meta = Trainer(card, Dataset(tiny_dataset), 0, tmp_path / "out", config, device="cuda").fit()
    assert meta["device"].startswith("cuda")
    trained = TrainedModel.load(tmp_path / "out")
    dataset = Dataset(tiny_dataset)
    image, _ = dataset.load_image(dataset.split(0)["test"][0])
    on_gpu = trained.segment(image, torch.device("cuda"))
    on_cpu = trained.segment(image, torch.device("cpu"))
    assert on_gpu.shape == on_cpu.shape == image.shape[1:]
    # bfloat16 on CUDA against float32 on CPU: labels may differ only where the two classes tie
    assert np.mean(on_gpu == on_cpu) > 0.99


def test_crf_loss_on_cuda_equals_cpu() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 8, 24, 24, generator=generator)
    features = torch.randn(2, 2, 8, 24, 24, generator=generator)  # CT and MR
    spacing = [(3.0, 1.27, 1.27)] * 2
    cpu = multiview_crf_loss(logits, features, spacing)
    cuda = multiview_crf_loss(logits.cuda(), features.cuda(), spacing)
    assert torch.allclose(cpu, cuda.cpu(), rtol=1e-4, atol=1e-6)
