"""Sustained load: one query after another for a fixed time, summarised per minute.

``--bench`` times 100 invokes after a warm-up, the right number for comparing files
but not what a clinic lives with: a Pi running for hours in a warm room heats up,
hits its soft temperature limit and lowers its clock. Here the runner issues one
sample per query (MLPerf SingleStream: the next query starts when the previous one
returns) for the whole duration, and each minute gets its p50, p90, MLPerf's
early-stopping p90 estimate at confidence 0.99, and the temperature, clock and
throttle readings taken during it (``sensors.py``; "not readable here" where the
machine exposes none). The drift summary is the p90 of the last five minutes over
the p90 of the first five (halves of the run when it is shorter than ten minutes).
numpy and the standard library only: the same code runs on the Pi over SSH.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .sensors import NOT_READABLE, decode_throttled, read_all

PERCENTILE = 0.90
CONFIDENCE = 0.99
DRIFT_SPAN_S = 300.0


def _binomial_cdf_upto(n: int, q: float, need: float) -> list[float]:
    """P(X <= k) for X ~ Binomial(n, q), k = 0, 1, ... until it reaches ``need`` (log space: n may be 10^5)."""
    log_pmf = n * math.log1p(-q)
    log_ratio = math.log(q) - math.log1p(-q)
    cdf, log_cdf, k = [], -math.inf, 0
    while True:
        log_cdf = np.logaddexp(log_cdf, log_pmf)
        cdf.append(math.exp(log_cdf))
        if cdf[-1] >= need or k >= n:
            return cdf
        log_pmf += math.log(n - k) - math.log(k + 1) + log_ratio
        k += 1


def early_stopping_estimate(times_ms: list[float] | np.ndarray, percentile: float = PERCENTILE,
                            confidence: float = CONFIDENCE) -> dict[str, Any]:
    """MLPerf LoadGen's SingleStream early-stopping estimate of a latency percentile.

    LoadGen (``results.cc``, ``early_stopping.cc``) takes ``t`` as one less than the
    smallest ``i >= 2`` for which ``h = n - i`` queries under the latency and ``i`` over it
    no longer pass, i.e. for which P(Binomial(n, 1 - percentile) <= i) >= 1 - confidence,
    and reports the ``t``-th largest latency (``sorted[n - t]``); with fewer than the
    minimum queries (P(Binomial(n, 1 - percentile) <= 1) >= 1 - confidence) there is no
    estimate. This is that rule computed from the binomial CDF directly (the test checks it
    against a literal transcription of LoadGen's search).
    """
    a = np.sort(np.asarray(times_ms, dtype=np.float64))
    n, q, alpha = len(a), 1.0 - percentile, 1.0 - confidence
    need = min_queries(percentile, confidence)
    if n < need:
        return {"estimate_ms": None, "n": n, "min_queries": need, "discarded": None,
                "note": f"only {n} queries: early stopping needs at least {need}"}
    cdf = _binomial_cdf_upto(n, q, alpha)
    first = next(i for i in range(2, len(cdf)) if cdf[i] >= alpha) if len(cdf) > 2 else 2
    t = first - 1
    return {"estimate_ms": float(a[n - t]), "n": n, "min_queries": need, "discarded": t - 1}


def min_queries(percentile: float = PERCENTILE, confidence: float = CONFIDENCE) -> int:
    """The fewest queries with an early-stopping estimate (64 for p90 at 0.99, as LoadGen says)."""
    n = 2
    while _binomial_cdf_upto(n, 1.0 - percentile, 2.0)[1] >= 1.0 - confidence:
        n += 1
    return n


def run_queries(invoke: Callable[[Any], Any], prepared: Any, seconds: float, *, warmup: int = 10, sample_every: float = 5.0,
                read_sensors: Callable[[], dict[str, Any]] = read_all) -> tuple[list[int], list[int], list[tuple[float, dict[str, Any]]]]:
    """Query start offsets and durations (ns) for ``seconds``, and a sensor reading about every
    ``sample_every`` s, taken between queries so it never lands inside a timed call."""
    for _ in range(warmup):
        invoke(prepared)
    clock = time.perf_counter_ns
    begin = clock()
    end, step = begin + int(seconds * 1e9), int(sample_every * 1e9)
    starts: list[int] = []
    durations: list[int] = []
    samples = [(0.0, read_sensors())]
    next_sample = begin + step
    while True:
        t0 = clock()
        if t0 >= end:
            break
        invoke(prepared)
        t1 = clock()
        starts.append(t0 - begin)
        durations.append(t1 - t0)
        if t1 >= next_sample:
            samples.append(((t1 - begin) / 1e9, read_sensors()))
            next_sample += step * max(1, (t1 - next_sample) // step + 1)
    samples.append(((clock() - begin) / 1e9, read_sensors()))
    return starts, durations, samples


def _window(k: int, window_s: float, times: np.ndarray, readings: list[dict[str, Any]]) -> dict[str, Any]:
    temps = [r["temp_c"] for r in readings if r.get("temp_c") is not None]
    clocks = [r["clock_mhz"] for r in readings if r.get("clock_mhz") is not None]
    words = [r["throttled"] for r in readings if r.get("throttled") is not None]
    word = int(np.bitwise_or.reduce(words)) if words else None
    es = early_stopping_estimate(times)
    return {"minute": k + 1, "from_s": k * window_s, "n": int(len(times)),
            "p50_ms": float(np.percentile(times, 50)) if len(times) else None,
            "p90_ms": float(np.percentile(times, 90)) if len(times) else None,
            "early_stop_p90_ms": es["estimate_ms"], "early_stop_note": es.get("note"),
            "temp_c_max": max(temps) if temps else None, "clock_mhz_min": min(clocks) if clocks else None,
            "throttled": word, "throttled_bits": decode_throttled(word) if word else []}


def summarize_run(starts_ns: list[int], durations_ns: list[int], samples: list[tuple[float, dict[str, Any]]], window_s: float = 60.0) -> dict[str, Any]:
    """Per-window statistics, the first/last p90 drift and every throttle bit seen, from :func:`run_queries`' output."""
    starts = np.asarray(starts_ns, dtype=np.float64) / 1e9
    times = np.asarray(durations_ns, dtype=np.float64) / 1e6
    elapsed = samples[-1][0]
    n_windows = max(1, math.ceil(elapsed / window_s - 1e-9))
    windows = []
    for k in range(n_windows):
        sel = (starts >= k * window_s) & (starts < (k + 1) * window_s)
        readings = [r for t, r in samples if k * window_s <= t <= (k + 1) * window_s]
        if sel.any():
            windows.append(_window(k, window_s, times[sel], readings))
    return {"windows": windows, "drift": drift(starts, times, elapsed), "throttle": throttle_summary(samples),
            "sources": samples[0][1].get("sources", {}), "overall_early_stop_p90": early_stopping_estimate(times)}


def drift(starts: np.ndarray, times: np.ndarray, elapsed: float) -> dict[str, Any]:
    """p90 of the last ``span`` seconds over p90 of the first (5 min, or half of a shorter run)."""
    span = min(DRIFT_SPAN_S, elapsed / 2)
    first, last = times[starts < span], times[starts >= elapsed - span]
    if not len(first) or not len(last):
        return {"span_s": span, "first_p90_ms": None, "last_p90_ms": None, "ratio": None}
    p_first, p_last = float(np.percentile(first, 90)), float(np.percentile(last, 90))
    return {"span_s": span, "first_p90_ms": p_first, "last_p90_ms": p_last, "ratio": p_last / p_first,
            "first_n": int(len(first)), "last_n": int(len(last))}


def throttle_summary(samples: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """Every throttle bit any reading showed; "not readable here" when no reading had the word."""
    words = [r["throttled"] for _t, r in samples if r.get("throttled") is not None]
    if not words:
        why = samples[0][1].get("sources", {}).get("throttled", NOT_READABLE)
        return {"readable": False, "seen": None, "bits": [], "note": why}
    seen = int(np.bitwise_or.reduce(words))
    return {"readable": True, "seen": seen, "hex": hex(seen), "bits": decode_throttled(seen), "readings": len(words)}


def run_sustained(invoke: Callable[[Any], Any], prepared: Any, seconds: float, *, window_s: float = 60.0, warmup: int = 10,
                  sample_every: float = 5.0, read_sensors: Callable[[], dict[str, Any]] = read_all) -> dict[str, Any]:
    """The whole sustained record (plain JSON): raw per-query times and start offsets, sensor readings, per-window summary."""
    starts, durations, samples = run_queries(invoke, prepared, seconds, warmup=warmup, sample_every=sample_every,
                                             read_sensors=read_sensors)
    if not durations:
        raise ValueError(f"no query finished within {seconds} s")
    out = {"mode": "sustained", "seconds": seconds, "elapsed_s": samples[-1][0], "window_s": window_s, "warmup": warmup,
           "percentile": PERCENTILE, "confidence": CONFIDENCE, "sample_every_s": sample_every, "n_queries": len(durations),
           "runs_ms": [round(d / 1e6, 5) for d in durations], "starts_s": [round(s / 1e9, 5) for s in starts],
           "samples": [{"t_s": round(t, 3), **{k: r.get(k) for k in ("temp_c", "clock_mhz", "throttled")}} for t, r in samples]}
    out.update(summarize_run(starts, durations, samples, window_s))
    return out
