#!/usr/bin/env python3
"""Cold start: how long a freshly started runner takes to give its first verdict.

A Pi that reboots (or a systemd unit that restarts the runner) makes its first
patient wait for Python to start, numpy and the runtime to import, the model to
load, the self-test to run and the first image to be classified. This starts the
runner N times as a fresh process (``--selftest --image IMG --json``) and times
each from just before the process is spawned to the moment its verdict line
arrives on stdout, so nothing of the start-up is left out. The runner's own
``latency_ms`` of that image is the first warm inference (the model's first
invoke on a user's image, after the self-test's golden images).

The file cache is warm after the first process (the Pi after a reboot has it cold);
the first process's time is kept beside the median for that reason. Standard
library only; run next to ``edgecxr_runner.py``::

    python3 coldstart.py --model m.tflite --image chest.png --runs 10 [--threads 4] [--runtime litert]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "edgecxr_runner.py")


def one_cold_start(argv: list[str], timeout: float = 600.0) -> dict[str, Any]:
    """Spawn ``argv`` and read stdout until the verdict (a JSON line with a ``label`` or ``action``)."""
    t0 = time.perf_counter_ns()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    verdict_ns, record = None, None
    try:
        for line in proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and ("label" in obj or "action" in obj):
                verdict_ns, record = time.perf_counter_ns() - t0, obj
                break
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"error": f"no verdict within {timeout:.0f} s"}
    if verdict_ns is None:
        return {"error": f"runner exited {proc.returncode} without a verdict: {(err.strip().splitlines() or ['no output'])[-1][:200]}"}
    first = record.get("latency_ms")  # NaN when the image was refused before the model ran
    return {"ms": verdict_ns / 1e6, "first_inference_ms": first if first == first else None, "action": record.get("action"),
            "exit": proc.returncode}


def cold_starts(model: str, image: str, runs: int, threads: int | None = None, runtime: str | None = None,
                python: str | None = None) -> dict[str, Any]:
    """``runs`` fresh processes, one after another; medians and every run's numbers."""
    argv = [python or sys.executable, RUNNER, "--model", model, "--image", image, "--selftest", "--json"]
    argv += ["--threads", str(threads)] if threads else []
    argv += ["--runtime", runtime] if runtime else []
    results = [one_cold_start(argv) for _ in range(runs)]
    ok = [r for r in results if "ms" in r]
    if not ok:
        return {"mode": "cold_start", "error": results[0]["error"], "runs": runs}
    firsts = [r["first_inference_ms"] for r in ok if r["first_inference_ms"] is not None]
    return {"mode": "cold_start", "runs": runs, "ok": len(ok), "errors": [r["error"] for r in results if "error" in r][:3],
            "cold_start_ms": [round(r["ms"], 3) for r in ok], "cold_start_median_ms": statistics.median(r["ms"] for r in ok),
            "cold_start_first_process_ms": ok[0]["ms"], "first_inference_ms": firsts,
            "first_inference_median_ms": statistics.median(firsts) if firsts else None,
            "threads": threads, "runtime": runtime, "model": os.path.basename(model)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coldstart.py", description=__doc__.splitlines()[1])
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True, help="the image whose verdict ends each timing")
    p.add_argument("--runs", type=int, default=10, help="fresh processes (default 10)")
    p.add_argument("--threads", type=int)
    p.add_argument("--runtime")
    p.add_argument("--python", help="interpreter for the runner processes (default: this one), e.g. a wrapper script")
    a = p.parse_args(argv)
    if a.runs < 1 or not os.path.isfile(a.model) or not os.path.isfile(a.image):
        print("coldstart: error: --runs must be at least 1 and --model/--image must be files", file=sys.stderr)
        return 2
    print(json.dumps(cold_starts(a.model, a.image, a.runs, a.threads, a.runtime, a.python)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
