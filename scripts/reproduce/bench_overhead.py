#!/usr/bin/env python3
"""How much the bench timing loop adds to what it measures.

For each model, in one process, interleaved round by round (so machine noise hits
both sides alike):

- bare:    ``t0 = perf_counter_ns(); for _ in range(N): invoke(x); t1`` - one external
           clock pair around N plain calls, nothing else in the loop;
- harness: the same external clock pair around ``device/latency.time_invocations``
           (warm-up 0, N runs), which itself reads the clock twice and appends a
           value per call; its own median of the per-call times is recorded too.

Reported per round and summarised as medians over rounds: bare ms/call, harness
ms/call (external), the harness's own median, and the overhead
``harness_external / bare - 1`` in percent. A null callable shows the loop's fixed
cost per call in nanoseconds. Usage::

    python scripts/reproduce/bench_overhead.py [MODEL ...] [--threads 1] [--rounds 20] [--calls 50] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

DEFAULT_MODELS = [
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "reference-models", "tf2_mobilenet_v2_1.0_224_ptq.tflite"),
]


def bare_loop(invoke, x, n: int) -> float:
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(n):
        invoke(x)
    return (clock() - t0) / 1e6 / n


def harness_loop(invoke, x, n: int) -> tuple[float, float]:
    from edgecxr.device.latency import time_invocations

    clock = time.perf_counter_ns
    t0 = clock()
    times = time_invocations(invoke, x, warmup=0, runs=n)
    return (clock() - t0) / 1e6 / n, float(np.median(times))


def measure(path: str, threads: int, rounds: int, calls: int, warmup: int) -> dict:
    from edgecxr.eval.measure import synthetic_input
    from edgecxr.models.runtime import open_model

    backend = open_model(path, threads, require_contract=False)
    if backend.contract is not None:
        x = backend.prepare(np.random.default_rng(0).standard_normal(backend.contract.model_input_shape()).astype(np.float32))
    else:
        x = synthetic_input(backend)
    for _ in range(warmup):
        backend.invoke(x)
    per_round = []
    for r in range(rounds):
        order = ("bare", "harness") if r % 2 == 0 else ("harness", "bare")  # alternate who goes first
        res: dict = {}
        for side in order:
            if side == "bare":
                res["bare_ms"] = bare_loop(backend.invoke, x, calls)
            else:
                res["harness_ms"], res["harness_median_ms"] = harness_loop(backend.invoke, x, calls)
        res["overhead_pct"] = (res["harness_ms"] / res["bare_ms"] - 1) * 100
        res["median_vs_bare_pct"] = (res["harness_median_ms"] / res["bare_ms"] - 1) * 100
        per_round.append(res)
    summary = {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}
    q = statistics.quantiles([r["overhead_pct"] for r in per_round], n=4)
    summary["overhead_pct_iqr"] = [q[0], q[2]]
    summary["pooled_overhead_pct"] = (sum(r["harness_ms"] for r in per_round) / sum(r["bare_ms"] for r in per_round) - 1) * 100
    return {"model": os.path.basename(path), "runtime": backend.runtime, "threads": threads, "rounds": rounds,
            "calls_per_round": calls, "per_round": per_round, "median": summary}


def null_overhead_ns(n: int = 200_000) -> dict:
    """The loop's fixed cost per call with nothing to time."""
    from edgecxr.device.latency import time_invocations

    noop = lambda _x: None  # noqa: E731
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(n):
        noop(None)
    bare = (clock() - t0) / n
    t0 = clock()
    inner = time_invocations(noop, None, warmup=0, runs=n)
    harness = (clock() - t0) / n
    return {"bare_ns_per_call": bare, "harness_ns_per_call": harness, "added_ns_per_call": harness - bare,
            "harness_median_of_empty_call_ns": float(np.median(inner)) * 1e6}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Timing-loop overhead of edgecxr bench, measured side by side.")
    p.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--calls", type=int, default=50, help="invoke() calls per block")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--json", help="also write the raw per-round numbers here")
    a = p.parse_args(argv)
    from edgecxr.device.sysinfo import device_string

    print(f"device: {device_string()}")
    null = null_overhead_ns()
    print(f"empty callable: bare loop {null['bare_ns_per_call']:.0f} ns/call, harness {null['harness_ns_per_call']:.0f} ns/call "
          f"-> the timing loop adds {null['added_ns_per_call']:.0f} ns per call")
    results = []
    for path in a.models:
        if not os.path.exists(path):
            print(f"skip {path}: not found", file=sys.stderr)
            continue
        res = measure(path, a.threads, a.rounds, a.calls, a.warmup)
        results.append(res)
        print(f"\n{res['model']} [{res['runtime']}, {a.threads} thread(s)], {a.rounds} interleaved rounds x {a.calls} calls")
        print(f"{'round':>5} {'bare ms/call':>13} {'harness ms/call':>16} {'harness median':>15} {'overhead %':>11}")
        for i, r in enumerate(res["per_round"]):
            print(f"{i:>5} {r['bare_ms']:>13.4f} {r['harness_ms']:>16.4f} {r['harness_median_ms']:>15.4f} {r['overhead_pct']:>+11.3f}")
        m = res["median"]
        print(f"{'median':>5} {m['bare_ms']:>13.4f} {m['harness_ms']:>16.4f} {m['harness_median_ms']:>15.4f} {m['overhead_pct']:>+11.3f}")
        fixed_pct = null["added_ns_per_call"] / (m["harness_median_ms"] * 1e6) * 100
        print(f"timing loop overhead: {m['overhead_pct']:+.3f}% of wall time per call (median over rounds, IQR "
              f"{m['overhead_pct_iqr'][0]:+.2f}..{m['overhead_pct_iqr'][1]:+.2f}%; all rounds pooled {m['pooled_overhead_pct']:+.3f}%); "
              f"fixed cost {null['added_ns_per_call']:.0f} ns = {fixed_pct:.4f}% of the {m['harness_median_ms']:.3f} ms median")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump({"null": null, "results": results, "device": device_string()}, fh, indent=2)
    return 0 if results else 2


if __name__ == "__main__":
    sys.exit(main())
