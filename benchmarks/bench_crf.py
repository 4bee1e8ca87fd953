"""Peak memory and time of CmFNet's multi-view gated CRF term (forward + backward).

Run: ``python benchmarks/bench_crf.py [--batch 16] [--patch 16 96 96] [--downsample 1 2 2]``.
Defaults are the paper's training patch (96x96x16, our (z, y, x) = 16x96x96) and batch (16), two
classes, and the plugin's call: one multi-view loss per modality (CT and MR kernels) on y_mm.

Each configuration runs in a fresh process. On CPU the peak is the highest resident set size
seen by a thread polling ``/proc/self/statm`` during the call, minus the size just before it
(so the inputs are excluded; a spike shorter than the polling interval can be missed); on CUDA
it is ``torch.cuda.max_memory_allocated`` above what the inputs hold. For comparison the script prints
the unfold-based references' memory, estimated as shared/docs/reference-methods.md §6 does:
unfolded probabilities, their product with the kernel, the kernel and three unfolded feature
channels, kept for backward, in every view and for each of the two kernels.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import threading
import time

import torch

from cmfnet.training.losses.crf import multiview_crf_loss

SPACING = (3.0, 1.27, 1.27)  # NPC CT, (z, y, x) mm
GIB = 1024 ** 3


def unfold_estimate_gib(batch: int, classes: int, grid: tuple[int, int, int], radius: int,
                        kernels: int) -> float:
    window = (2 * radius + 1) ** 2
    voxels = grid[0] * grid[1] * grid[2]
    floats_per_view = batch * (2 * classes + 1 + 3) * window * voxels
    return floats_per_view * 4 * 3 * kernels / GIB


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ResidentPeak:
    """Highest resident set size while the ``with`` block runs, by polling every millisecond."""

    def __enter__(self) -> ResidentPeak:
        self.start = self.peak = _resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _resident_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _resident_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def _run(device: str, batch: int, classes: int, patch: tuple[int, int, int], downsample: tuple[int, int, int],
         radius: int, threads: int, queue: mp.Queue) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    logits = torch.randn(batch, classes, *patch, device=dev, requires_grad=True)
    image = torch.randn(batch, 2, *patch, device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    with ResidentPeak() as resident:
        start, cpu_start = time.perf_counter(), time.process_time()
        losses = multiview_crf_loss(logits, image, SPACING, downsample, radius)
        (0.2 * losses.sum()).backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = torch.cuda.max_memory_allocated() - base if dev.type == "cuda" else resident.growth
    queue.put((seconds, cpu_seconds, peak))


def measure(device: str, batch: int, classes: int, patch: tuple[int, int, int],
            downsample: tuple[int, int, int], radius: int, threads: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the process, peak bytes) of one forward + backward."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run, args=(device, batch, classes, patch, downsample, radius, threads, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 96, 96], metavar=("Z", "Y", "X"))
    parser.add_argument("--downsample", type=int, nargs=3, action="append", metavar=("Z", "Y", "X"),
                        help="CRF grid factors; repeat to compare (default: 1 2 2)")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--out", help="also write the table as CSV here")
    args = parser.parse_args(argv)
    rows = []
    patch = tuple(args.patch)
    print(f"torch {torch.__version__}; patch (z,y,x) {patch}; classes {args.classes}; radius {args.radius}; "
          f"2 kernels (CT, MR) x 3 views; CPU threads {args.threads}")
    print(f"{'device':6} {'batch':>5} {'grid (z,y,x)':>14} {'wall s':>8} {'CPU s':>8} {'peak GiB':>9} "
          f"{'unfold est. GiB':>16}")
    for factors in [tuple(f) for f in (args.downsample or [[1, 2, 2]])]:
        grid = tuple(-(-p // f) for p, f in zip(patch, factors))
        for device in args.devices:
            for batch in args.batch:
                seconds, cpu_seconds, peak = measure(device, batch, args.classes, patch, factors, args.radius,
                                                args.threads)
                estimate = unfold_estimate_gib(batch, args.classes, grid, args.radius, kernels=2)
                print(f"{device:6} {batch:5d} {str(grid):>14} {seconds:8.2f} {cpu_seconds:8.2f} {peak / GIB:9.3f} "
                      f"{estimate:16.1f}", flush=True)
                rows.append({"device": device, "batch": batch, "patch": "x".join(map(str, patch)),
                             "grid": "x".join(map(str, grid)), "wall_s": round(seconds, 3),
                             "cpu_s": round(cpu_seconds, 3), "peak_gib": round(peak / GIB, 4),
                             "unfold_estimate_gib": round(estimate, 2),
                             "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else ""})
    if args.out:
        import pandas as pd

        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        pd.DataFrame(rows).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
