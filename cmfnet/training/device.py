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


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision type on ``device``: bfloat16 where the GPU supports it (its float32 exponent
    range needs no loss scaling), else float16 (with a gradient scaler in training); None on CPU,
    where autocast would only slow the small convolutions down."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def mixed_precision(device: torch.device, amp: bool) -> Any:
    """The autocast context training, validation and inference share (see :func:`amp_dtype`)."""
    dtype = amp_dtype(device)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=amp and dtype is not None)



def set_cpu_threads(threads: int | None) -> None:
    """Cap torch's intra-op threads. Small 3D patches gain little from threads, and jobs that run
    side by side and each take every core spin-wait on each other (measured: 15-26 s per case
    instead of 2-3 s when two predictions share 2 cores with torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise InputError("--threads", f"{threads}: must be >= 1")
    torch.set_num_threads(threads)


def add_threads_argument(parser: Any) -> None:
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
