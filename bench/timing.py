"""Latency sampling: warm up, then time many calls of one operation (setup excluded), report percentiles."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stats:
    """Wall-clock milliseconds of ``samples`` timed calls."""

    samples: list[float] = field(repr=False)

    @property
    def p50_ms(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.samples, 99)

    def __str__(self) -> str:
        return f"p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms (n={len(self.samples)})"


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (the p99 of 100 samples is the 99th smallest)."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


def measure(
    operation: Callable[[], Any],
    *,
    iterations: int,
    warmup: int,
    setup: Callable[[], Any] | None = None,
) -> Stats:
    """Call ``setup`` (untimed) then ``operation`` (timed), ``warmup`` times unrecorded and ``iterations`` recorded.

    The garbage collector is paused around each timed call and run between calls, so a collection triggered by
    one iteration's garbage never lands inside another's timing.
    """
    samples: list[float] = []
    for index in range(warmup + iterations):
        if setup is not None:
            setup()
        gc.collect(0)
        gc.disable()
        try:
            started = time.perf_counter_ns()
            operation()
            elapsed = time.perf_counter_ns() - started
        finally:
            gc.enable()
        if index >= warmup:
            samples.append(elapsed / 1e6)
    return Stats(samples)
