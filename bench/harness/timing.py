"""Timing: warm-up, then the median of per-call device events over rotated inputs.

Each timed call starts from an idle device (synchronise, record, call, record, synchronise), so a
call's time includes its host-side launch overhead: that is what a training loop pays for a step.
The number of calls adapts to the step's length (at least ``min_iters``, at most ``max_iters``,
stopping once ``target_s`` seconds were spent), so large configurations do not eat the budget.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    iters: int

    def as_dict(self, prefix: str) -> dict:
        return {
            f"{prefix}_ms": round(self.median_ms, 4),
            f"{prefix}_min_ms": round(self.min_ms, 4),
            f"{prefix}_iters": self.iters,
        }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[torch.Tensor], object],
    inputs: Sequence[torch.Tensor],
    device: torch.device,
    *,
    warmup: int = 2,
    min_iters: int = 3,
    max_iters: int = 20,
    target_s: float = 0.4,
) -> Timing:
    """Median milliseconds of ``fn(x)`` with ``x`` rotating through ``inputs``."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    sync(device)
    times: list[float] = []
    t_start = time.perf_counter()
    i = 0
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - t_start < target_s):
        x = inputs[i % len(inputs)]
        i += 1
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return Timing(statistics.median(times), min(times), len(times))


class Stopwatch:
    """Wall-clock seconds of a block, synchronising the device at both ends."""

    def __init__(self, device: torch.device):
        self.device = device
        self.s = 0.0

    def __enter__(self):
        sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.s = time.perf_counter() - self.t0
        return False
