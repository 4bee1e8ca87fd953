"""Which device to compute on, and the mixed precision training, validation and inference share."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

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


# widest convolution (input or output channels) that runs channels-last on the CPU
CHANNELS_LAST_MAX_CHANNELS = 16


def _to_layout(layout: torch.memory_format, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.contiguous(memory_format=layout) if isinstance(a, torch.Tensor) and a.dim() == 5 else a
                 for a in args)


def set_cpu_layout(model: nn.Module, device: torch.device) -> nn.Module:
    """Give each 3D convolution the memory layout oneDNN runs fastest for it on the CPU.

    Channels-last is about twice as fast for the few-channel, full-resolution convolutions that
    dominate a width-8 network, and several times slower for the many-channel ones at the
    bottleneck (measured at 16x32x32 patches, batch 2, one thread). So convolutions with at most
    ``CHANNELS_LAST_MAX_CHANNELS`` channels keep channels-last weights, the others PyTorch's
    default, and a forward pre-hook brings each convolution's input to its layout: activations
    change layout only where the network crosses that width. A training iteration then takes
    23-27 % less time for the CmFNet rows, 13 % for USTM and 3-25 % for the V-Net rows
    (docs/benchmarks.md).
    The values computed are the same up to floating-point summation order. CUDA is left as it is:
    the layouts have not been measured there. Calling it twice changes nothing.
    """
    if device.type != "cpu" or getattr(model, "_cpu_layout", False):
        return model
    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            narrow = max(module.in_channels, module.out_channels) <= CHANNELS_LAST_MAX_CHANNELS
            layout = torch.channels_last_3d if narrow else torch.contiguous_format
            module.to(memory_format=layout)
            module.register_forward_pre_hook(partial(_to_layout, layout))
    model._cpu_layout = True
    return model


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
