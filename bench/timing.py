"""Side-by-side timing shared by the benchmarks: every case once per repetition, in turn.

Reads and writes nothing. Alternating the cases within each repetition spreads the
noise of a shared machine over all of them alike; each case reports its median.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def alternate(cases: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """`{name: median}` of what each case returns (seconds it measured itself), run alternately."""
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            results[name].append(case())
    return {name: statistics.median(values) for name, values in results.items()}


def timed(work: Callable[[], object], device: torch.device) -> float:
    """Seconds `work()` takes, waiting for a GPU to finish it."""
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
