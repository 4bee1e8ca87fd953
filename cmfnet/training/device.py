"""Which device to compute on, and the mixed precision training, validation and inference share."""

from __future__ import annotations

from typing import Any

import torch

from cmfnet.errors import InputError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device", "CUDA requested but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError("--device", f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None


def mixed_precision(device: torch.device, amp: bool) -> Any:
    """The autocast context training, validation and inference share: bfloat16 on CUDA when enabled."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")

