"""Shared by the benchmarks: step times of several variants measured interleaved, so that all of them see the same
machine conditions (this machine's speed varies by up to 2x from day to day and +-20% from run to run)."""

import time
from collections import defaultdict


def interleaved_times(names, step, steps: int, warmup: int = 5) -> dict[str, list[float]]:
    """`step(name)` for every name, `warmup` times each first, then `steps` rounds of one step per name in turn;
    returns the seconds of each measured step per name."""
    for n in names:
        for _ in range(warmup):
            step(n)
    times = defaultdict(list)
    for _ in range(steps):
        for n in names:
            t = time.perf_counter()
            step(n)
            times[n].append(time.perf_counter() - t)
    return times
