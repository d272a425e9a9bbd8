"""The latency protocol, shared by ``edgecxr bench`` and the Pi runner's ``--bench``.

As TFLite's benchmark_model does it: inputs prepared before timing, warm-up runs
not counted, then a fixed number of runs and/or a minimum time, with
``time.perf_counter_ns`` around the invoke call only. The result is plain JSON with
the raw per-run times, so any table can be rebuilt from it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def time_invocations(invoke: Callable[[Any], Any], prepared: Any, warmup: int = 10, runs: int = 100,
                     min_seconds: float = 0.0, max_runs: int = 100_000) -> list[float]:
    """Milliseconds per call of ``invoke(prepared)``: ``runs`` calls, more while under ``min_seconds``."""
    for _ in range(warmup):
        invoke(prepared)
    times_ns: list[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(min_seconds * 1e9)
    while len(times_ns) < runs or (clock() < deadline and len(times_ns) < max_runs):
        t0 = clock()
        invoke(prepared)
        times_ns.append(clock() - t0)
    return [t / 1e6 for t in times_ns]


def summarize(times_ms: list[float]) -> dict[str, float]:
    a = np.asarray(times_ms, dtype=np.float64)
    return {
        "mean_ms": float(a.mean()), "median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)), "std_ms": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "min_ms": float(a.min()), "max_ms": float(a.max()), "n_runs": len(a),
    }


def latency_record(times_ms: list[float], *, threads: int | None, warmup: int, load_ms: float | None = None) -> dict[str, Any]:
    """The JSON shape both bench and the runner emit for one (model, threads) measurement."""
    return {**summarize(times_ms), "threads": threads, "warmup": warmup, "load_ms": load_ms, "runs_ms": [round(t, 5) for t in times_ms]}
