"""``sustained.json`` -> the per-minute tables and ``bench_sustained.png``.

Works from the JSON alone (``python -m edgecxr.bench.sustained_report sustained.json``),
so the report can be rebuilt from a run on the Pi later. A reading the machine did
not expose is printed as "not readable here" with the reason, never left blank.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _span(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def window_table(run: dict[str, Any]) -> list[str]:
    per_minute = run["window_s"] == 60
    head = ["minute" if per_minute else "window, s", "queries", "p50 ms", "p90 ms", "early-stop p90 ms", "max temp C", "min clock MHz", "throttle bits"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    temp_ok = any(w.get("temp_c_max") is not None for w in run["windows"])
    clock_ok = any(w.get("clock_mhz_min") is not None for w in run["windows"])
    thr_ok = run.get("throttle", {}).get("readable")
    for w in run["windows"]:
        label = str(w["minute"]) if per_minute else f"{w['from_s']:g}-{w['from_s'] + run['window_s']:g}"
        bits = (", ".join(w["throttled_bits"]) or "none") if thr_ok else "not readable"
        lines.append("| " + " | ".join([label, str(w["n"]), _f(w["p50_ms"], "{:.3f}"), _f(w["p90_ms"], "{:.3f}"),
                                         _f(w["early_stop_p90_ms"], "{:.3f}"),
                                         _f(w["temp_c_max"], "{:.1f}") if temp_ok else "not readable",
                                         _f(w["clock_mhz_min"], "{:.0f}") if clock_ok else "not readable", bits]) + " |")
    return lines


def run_lines(run: dict[str, Any]) -> list[str]:
    """The block for one file on one machine: its header, the per-minute table, drift, throttling, readability."""
    title = f"### {run.get('artifact', '?')} [{run.get('runtime_name', '?')}] on {run.get('where', '?')}, {run.get('threads')} thread(s)"
    if run.get("error"):
        return [title, "", f"error: {run['error']}"]
    d, thr, src = run["drift"], run["throttle"], run.get("sources", {})
    ratio = (f"last {_span(d['span_s'])} p90 {d['last_p90_ms']:.3f} ms / first {_span(d['span_s'])} p90 "
             f"{d['first_p90_ms']:.3f} ms = **{d['ratio']:.3f}**") if d.get("ratio") is not None else "n/a (run too short)"
    overall = run.get("overall_early_stop_p90", {})
    lines = [title, "", f"Device: {run.get('device', '?')}",
             f"{run['n_queries']} queries in {run['elapsed_s']:.0f} s (asked {run['seconds']:g} s), {run.get('warmup')} warm-up "
             f"not counted; whole-run p90 early-stopping estimate {_f(overall.get('estimate_ms'), '{:.3f}')} ms.", "",
             *window_table(run), "",
             f"- Drift: {ratio}.",
             "- Throttle bits seen: " + ((", ".join(thr["bits"]) or "none") + f" (word {thr.get('hex')}, {thr.get('readings')} readings)"
                                         if thr.get("readable") else thr.get("note", "not readable here")) + ".",
             f"- Temperature: {src.get('temp_c', '?')}; clock: {src.get('clock_mhz', '?')}."]
    if run.get("emulated"):
        lines.append("- EMULATED (qemu): these timings say nothing about the device's latency.")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    s = doc.get("settings", {})
    out = [f"Sustained load: {s.get('seconds', '?'):g} s per file, one query after another (batch 1, `perf_counter_ns` around "
           f"invoke only), statistics per {s.get('window_s', 60):g} s window; early-stopping p90 as MLPerf LoadGen computes it "
           "(confidence 0.99). Temperature is the window's highest reading, clock its lowest (readings every 5 s, between queries).", ""]
    for run in doc["runs"]:
        out += [*run_lines(run), ""]
    return "\n".join(out).rstrip()


def _rolling_p90(starts: np.ndarray, times: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    edges = np.arange(0.0, (starts.max() if len(starts) else 0.0) + step, step)
    idx = np.digitize(starts, edges) - 1
    xs, ys = [], []
    for k in range(len(edges)):
        sel = times[idx == k]
        if len(sel):
            xs.append((edges[k] + step / 2) / 60)
            ys.append(np.percentile(sel, 90))
    return np.array(xs), np.array(ys)


def save_plot(doc: dict[str, Any], path: str) -> None:
    """Two panels against minutes: p90 latency per 10 s (lines) and per window (markers); CPU temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgecxr.device.atomic import atomic_path

    runs = [r for r in doc["runs"] if not r.get("error")]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    step = max(1.0, min(10.0, doc.get("settings", {}).get("seconds", 60) / 60))
    any_temp = False
    for i, r in enumerate(runs):
        color = plt.cm.tab10(i % 10)
        label = f"{r['artifact']} [{r.get('runtime_name')}] {r.get('where')}"
        xs, ys = _rolling_p90(np.asarray(r["starts_s"]), np.asarray(r["runs_ms"]), step)
        ax1.plot(xs, ys, color=color, lw=1, alpha=0.7, label=f"{label}: p90 per {step:g} s")
        wx = [(w["from_s"] + r["window_s"] / 2) / 60 for w in r["windows"]]
        ax1.plot(wx, [w["p50_ms"] for w in r["windows"]], "o--", color=color, ms=4, lw=0.8, label=f"{label}: p50 per window")
        temps = [(s["t_s"] / 60, s["temp_c"]) for s in r["samples"] if s.get("temp_c") is not None]
        if temps:
            any_temp = True
            ax2.plot(*zip(*temps), color=color, label=label)
    ax1.set_ylabel("latency per query, ms")
    ax1.set_title("Sustained load: latency and CPU temperature against time")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7, loc="best")
    ax2.set_xlabel("minutes since the first timed query")
    ax2.set_ylabel("CPU temperature, C")
    ax2.grid(alpha=0.3)
    if any_temp:
        ax2.legend(fontsize=7, loc="best")
    else:
        why = next((r.get("sources", {}).get("temp_c") for r in runs), None) or "not readable here"
        ax2.text(0.5, 0.5, f"temperature {why}", transform=ax2.transAxes, ha="center", va="center", fontsize=9, wrap=True)
        ax2.set_yticks([])
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import json

    p = argparse.ArgumentParser(description="Rebuild the sustained-load report (and optionally the plot) from sustained.json.")
    p.add_argument("sustained_json")
    p.add_argument("--plot", help="also write the plot here (PNG)")
    a = p.parse_args(argv)
    with open(a.sustained_json, encoding="utf-8") as fh:
        doc = json.load(fh)
    sys.stdout.write(markdown(doc) + "\n")
    if a.plot:
        save_plot(doc, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
