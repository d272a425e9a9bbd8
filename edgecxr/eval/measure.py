"""One artifact, one thread count, in a process of its own.

Run as ``python -m edgecxr.eval.measure --model M --threads N ... --out result.json``.
A fresh process per measurement means one model's allocator state, thread pools or
page cache residue cannot inflate the next one's latency or peak memory; the peak
resident set (``VmHWM``) is read after loading and timing, before the accuracy
pass touches the (large) evaluation batch, so it is the model's footprint plus the
interpreter and runtime, and the resident set just before loading is recorded
beside it so the model's own share can be told apart.

Latency follows ``device/latency.py`` exactly (the Pi runner uses the same code):
input prepared before timing, warm-up calls not counted, ``perf_counter_ns`` around
``invoke`` only, threads set explicitly on the runtime.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (kB), e.g. VmRSS or VmHWM."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    """VmHWM, the high-water mark of this process's own memory map.

    Not ``getrusage().ru_maxrss``: that survives ``exec`` and so reports the parent's
    resident set (the forked copy) when the parent is larger than the child.
    """
    peak = _status_mb("VmHWM")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def _preimport(runtime: str) -> None:
    """Import the runtime before the baseline RSS is read, so it is not billed to the model."""
    import importlib

    from edgecxr.device.formats import RUNTIMES

    for module in RUNTIMES[runtime].modules if runtime in RUNTIMES else ("torch",):  # the first the backend would use
        try:
            importlib.import_module(module)
            return
        except ImportError:  # opening the model reports the missing runtime in one line
            continue


def synthetic_input(backend: Any, seed: int = 0) -> np.ndarray:
    """A native-dtype input for a model without a contract (the runtime sees real-sized data)."""
    shape = tuple(d if d > 0 else 1 for d in backend.input_shape)
    rng = np.random.default_rng(seed)
    dt = np.dtype(backend.input_dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dt)
    return rng.standard_normal(shape).astype(dt)


def measure(model: str, threads: int, warmup: int, runs: int, min_seconds: float,
            latency_input: str | None = None, eval_inputs: str | None = None, probs_out: str | None = None,
            batch_size: int = 32, runtime: str | None = None) -> dict[str, Any]:
    from edgecxr.device.latency import latency_record, time_invocations
    from edgecxr.models.runtime import open_model, runtimes_for

    runtime = runtime or runtimes_for(model)[0]
    _preimport(runtime)
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    backend = open_model(model, threads, require_contract=False, runtime=runtime)
    load_ms = (time.perf_counter() - t0) * 1e3
    has_contract = backend.contract is not None
    selftest = None
    if has_contract:  # before any timing, as on the Pi: a file this CPU computes wrong is flagged, not just timed
        from edgecxr.device.selftest import run_selftest

        selftest = run_selftest(backend)
    if has_contract and latency_input:  # memory-mapped: the batch must not count towards peak RSS
        prepared, input_from = backend.prepare(np.array(np.load(latency_input, mmap_mode="r")[:1])), "first evaluation image"
    elif has_contract:  # random data still runs the real graph at its real size
        x = np.random.default_rng(0).standard_normal(backend.contract.model_input_shape()).astype(np.float32)
        prepared, input_from = backend.prepare(x), "synthetic input (no data)"
    else:
        prepared, input_from = synthetic_input(backend), "synthetic input (no contract)"
    times = time_invocations(backend.invoke, prepared, warmup=warmup, runs=runs, min_seconds=min_seconds) if runs > 0 else []
    record: dict[str, Any] = latency_record(times, threads=threads, warmup=warmup, load_ms=load_ms) if times else {
        "threads": threads, "warmup": warmup, "load_ms": load_ms, "runs_ms": [], "n_runs": 0}
    record.update({
        "peak_rss_mb": _peak_rss_mb(), "rss_before_load_mb": rss_before, "runtime": backend.runtime,
        "runtime_name": backend.runtime_name,
        "has_contract": has_contract, "input_shape": list(backend.input_shape), "input_dtype": backend.input_dtype,
        "latency_input": input_from, "pid": os.getpid(), "selftest": selftest,
    })
    if eval_inputs and probs_out and has_contract:
        xs = np.load(eval_inputs, mmap_mode="r")
        # the raw logits: softmax is derived from them, and the decision's OOD score rides in their mean
        out = [backend.predict(np.asarray(xs[i : i + batch_size])).astype(np.float64) for i in range(0, len(xs), batch_size)]
        np.save(probs_out, np.concatenate(out))
        record["probs_file"] = probs_out
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--runtime", help="one of the runtimes that open the file's format (default: the first)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--min-seconds", type=float, default=0.0)
    p.add_argument("--latency-input", help=".npy with preprocessed NCHW float32 images; the first is timed")
    p.add_argument("--eval-inputs", help=".npy with the preprocessed evaluation batch")
    p.add_argument("--probs-out", help="where to save the outputs (logits) of --eval-inputs")
    p.add_argument("--out", required=True, help="result JSON")
    a = p.parse_args(argv)
    try:
        result = measure(a.model, a.threads, a.warmup, a.runs, a.min_seconds, a.latency_input, a.eval_inputs, a.probs_out,
                         runtime=a.runtime)
    except Exception as exc:  # reported to the parent as data: one bad file must not end the run
        result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    with open(a.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return 0


def run_in_subprocess(model: str, threads: int, out_json: str, *, warmup: int, runs: int, min_seconds: float,
                      latency_input: str | None = None, eval_inputs: str | None = None, probs_out: str | None = None,
                      timeout: float = 3600, runtime: str | None = None) -> dict[str, Any]:
    """Launch :func:`main` in a fresh interpreter and return its result (``{"error": ...}`` on failure)."""
    cmd = [sys.executable, "-m", "edgecxr.eval.measure", "--model", model, "--threads", str(threads), *(["--runtime", runtime] if runtime else []),
           "--warmup", str(warmup), "--runs", str(runs), "--min-seconds", str(min_seconds), "--out", out_json]
    for flag, val in (("--latency-input", latency_input), ("--eval-inputs", eval_inputs), ("--probs-out", probs_out)):
        if val:
            cmd += [flag, val]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"measurement timed out after {timeout:.0f} s"}
    if not os.path.exists(out_json):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"measurement process exited {proc.returncode}: {tail[0][:300]}"}
    with open(out_json, encoding="utf-8") as fh:
        return json.load(fh)


if __name__ == "__main__":
    sys.exit(main())
