#!/usr/bin/env python3
"""The sentence a runtime comparison ends with, computed from ``bench.json`` alone.

Per device, model and thread count: the fastest artifact (file x runtime) whose macro-F1
stays within ``--max-drop`` points of its FP32 reference (point estimate; its CI is
printed beside it), whose top-1 agreement is at least ``--min-agreement`` and whose
self-test did not fail; then the fastest such row among the ``--baseline`` runtimes
(today's ONNX Runtime and TFLite by default) and the ratio of the two medians, both
from the same run.

    python scripts/reproduce/fastest_within.py runs/bench_runtimes/bench.json --max-drop 0.5

Prints Markdown lines; the device line names the CPU and its integer features.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

BASELINE = "onnxruntime,litert,litert-builtin"


def median_ms(row: dict[str, Any]) -> float | None:
    runs = row.get("runs_ms") or []
    return float(np.median(runs)) if runs else None


def eligible(row: dict[str, Any], max_drop: float, min_agreement: float) -> bool:
    d, agree = row.get("delta_macro_f1_pp"), row.get("top1_agreement")
    return (not row.get("error") and median_ms(row) is not None and d is not None and agree is not None
            and d >= -max_drop and agree >= min_agreement and (row.get("selftest") or {}).get("passed") is not False)


def describe(row: dict[str, Any]) -> str:
    lo, hi = row.get("delta_macro_f1_ci95") or (None, None)
    ci = f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None else ""
    return (f"{row['artifact']} on {row.get('runtime_name') or row.get('runtime')} ({row.get('runtime')}): "
            f"{median_ms(row):.2f} ms median, ΔF1 {row['delta_macro_f1_pp']:+.2f} pp{ci}, agreement {row['top1_agreement']:.3f}")


def summary(doc: dict[str, Any], max_drop: float, min_agreement: float, baseline: set[str]) -> list[str]:
    lines = [f"- Device `{label}`: {info.get('summary', '?')}" for label, info in doc.get("devices", {}).items()]
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in doc["rows"]:
        if r.get("threads"):
            groups.setdefault((r.get("device", "host"), r.get("arch", "?"), r["threads"]), []).append(r)
    for (device, arch, threads), rows in sorted(groups.items()):
        ok = [r for r in rows if eligible(r, max_drop, min_agreement)]
        if not ok:
            lines.append(f"- {arch} on {device}, {threads} thread(s): no artifact within {max_drop} points")
            continue
        best = min(ok, key=median_ms)
        base = [r for r in ok if (r.get("runtime_name") or "") in baseline]
        line = f"- {arch} on {device}, {threads} thread(s): fastest within {max_drop} points: {describe(best)}"
        if base:
            b = min(base, key=median_ms)
            line += f"; {median_ms(best) / median_ms(b):.2f}x the best of {', '.join(sorted(baseline))} ({describe(b)})"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench_json")
    p.add_argument("--max-drop", type=float, default=0.5, help="macro-F1 points an artifact may lose against FP32")
    p.add_argument("--min-agreement", type=float, default=0.95, help="top-1 agreement with FP32 an artifact needs")
    p.add_argument("--baseline", default=BASELINE, help="comma-separated runtimes the winner is compared with")
    a = p.parse_args(argv)
    with open(a.bench_json, encoding="utf-8") as fh:
        doc = json.load(fh)
    print("\n".join(summary(doc, a.max_drop, a.min_agreement, {b.strip() for b in a.baseline.split(",") if b.strip()})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
