"""Which CPUs the classifier process runs on, and which the rest of the service.

Measured on a 2-core machine, the classifier process sharing its core with the receiver, the
writer and storescu needed 8.6-12.7 ms of CPU per image for work that takes 5.9-7.4 ms in a loop
of its own (caches and branch predictors refilled after every switch); pinned to a core of its
own, the service kept 0.97-1.17 of ``--dir``'s throughput with four senders instead of 0.74-0.87
(``scripts/reproduce/serve_bench.py``, docs/results/serve.md). So by default the classifier gets
the last ``threads`` CPUs this process may use and everything else the others; with fewer than
two CPUs, or ``--no-pin``, nothing is pinned. Linux only (``os.sched_setaffinity``); elsewhere a
no-op. Stdlib only.
"""
from __future__ import annotations

import os


def plan(threads: int | None, enabled: bool = True) -> tuple[set[int], set[int]] | None:
    """(classifier CPUs, everyone else's CPUs), or None when nothing should be pinned."""
    if not enabled or not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    k = max(1, threads or 1)
    if len(allowed) < 2 or k >= len(allowed):
        return None
    return set(allowed[-k:]), set(allowed[:-k])


def pin(pid: int, cpus: set[int]) -> None:
    """``pid`` 0 is the caller; threads it starts later inherit the set."""
    os.sched_setaffinity(pid, cpus)


def describe(placement: tuple[set[int], set[int]] | None) -> str:
    if placement is None:
        return "CPU placement: not pinned"
    mine, rest = placement
    return (f"CPU placement: classifier process on CPU {','.join(map(str, sorted(mine)))}, receiver and service on "
            f"CPU {','.join(map(str, sorted(rest)))} (--no-pin to let the kernel place them)")
