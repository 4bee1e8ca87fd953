"""What every benchmark shares: the machine/versions/commit columns, the CSV writer, the optional
imports of the ``bench`` extra, and peak-memory measurement in a fresh process.

A benchmark number means nothing without the machine and the code it was measured on, so every
row carries them (:data:`MACHINE_COLUMNS`), not only a header or a file name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import multiprocessing
import os
import platform
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch

import cmfnet
from cmfnet.data.io import atomic_path
from cmfnet.errors import InputError

#: the repository root of this checkout (the git commit, the default method cards)
REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = Path("results") / "benchmarks"
INSTALL_HINT = "pip install -e '.[bench]'"
MACHINE_COLUMNS = ("platform", "cpu_model", "cpu_count", "gpu", "torch_version", "numpy_version",
                   "cmfnet_version", "commit")
GIB = 1024 ** 3
T = TypeVar("T")


def require(module: str, distribution: str) -> ModuleType:
    """Import an optional module of the ``bench`` extra, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise InputError(distribution, f"not installed (needed by cmfnet bench; install the extra: "
                                       f"{INSTALL_HINT})") from err


def distribution_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str:
    try:
        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


@cache
def machine_fields() -> dict[str, object]:
    """The machine, library versions and commit a row was measured on (:data:`MACHINE_COLUMNS`)."""
    return {"platform": platform.platform(), "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
            "torch_version": torch.__version__, "numpy_version": np.__version__,
            "cmfnet_version": cmfnet.__version__, "commit": _commit()}


def write_csv(rows: Sequence[dict[str, object]], path: Path) -> Path:
    """Write ``rows`` with the machine columns last in each, atomically (no half-written table)."""
    table = pd.DataFrame(list(rows))
    for column, value in machine_fields().items():
        table[column] = value
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    print(f"wrote {path} ({len(rows)} rows)")
    return path


def size_text(values: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in values)


# -- peak memory ---------------------------------------------------------------------------------
def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ResidentPeak:
    """Highest resident set size while the ``with`` block runs, by polling every millisecond.

    ``growth`` is the peak minus the size at entry, so inputs made before are excluded; a spike
    shorter than the polling interval can be missed.
    """

    def __enter__(self) -> ResidentPeak:
        self.start = self.peak = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def in_fresh_process(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a new spawned process, so its peak memory is its own alone.

    Exceptions (an :class:`InputError` too) come back to the caller as they were raised.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()
