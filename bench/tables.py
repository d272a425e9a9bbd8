"""Rows of ``bench.json`` -> the Markdown table, ``bench.csv`` and the device legend.

Everything here works from the JSON alone, so any table can be rebuilt later:
``python -m edgecxr.bench.tables out/bench.json --format md``. Latency statistics
are recomputed from the raw per-run times, not copied.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from typing import Any

from edgecxr.bench.advice import advice_lines, latency_stats
from edgecxr.device.selftest import selftest_cell

LATENCY_KEYS = ("mean_ms", "median_ms", "p90_ms", "p99_ms", "std_ms", "min_ms", "max_ms", "n_runs")

CSV_COLUMNS = [
    "artifact", "arch", "format", "precision", "runtime", "device", "threads", "size_bytes", "params", "macs",
    "accuracy", "accuracy_ci_lo", "accuracy_ci_hi", "macro_f1", "macro_f1_ci_lo", "macro_f1_ci_hi",
    "auc_macro", "auc_macro_ci_lo", "auc_macro_ci_hi", "n_images", "reference", "delta_macro_f1_pp",
    "delta_macro_f1_ci_lo", "delta_macro_f1_ci_hi", "top1_agreement", *LATENCY_KEYS, "warmup", "load_ms", "peak_rss_mb",
    "rss_before_load_mb", "latency_input", "selftest", "cpu_int8_target", "device_string", "note", "path",
]


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _ci(row: dict[str, Any], key: str, scale: float = 1.0, fmt: str = "{:.3f}") -> str:
    v = row.get(key)
    if v is None:
        return "n/a"
    ci = row.get(f"{key}_ci95")
    text = fmt.format(v * scale)
    if ci and None not in ci:
        text += f" [{fmt.format(ci[0] * scale)}, {fmt.format(ci[1] * scale)}]"
    return text


def _delta(row: dict[str, Any]) -> str:
    d = row.get("delta_macro_f1_pp")
    if d is None:
        return "n/a"
    lo, hi = row.get("delta_macro_f1_ci95") or (None, None)
    return f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" if lo is not None else f"{d:+.2f}"


def _millions(v: Any) -> str:
    return "n/a" if v is None else f"{v / 1e6:.2f}"


MD_HEADER = ["model", "format", "precision", "runtime", "device", "thr", "size MB", "params M", "MACs M",
             "accuracy [95% CI]", "macro-F1 [95% CI]", "AUC [95% CI]", "ΔF1 pp vs FP32 [95% CI]", "top-1 agree",
             "median ms", "mean ± std ms", "p90 ms", "p99 ms", "min ms", "load ms", "peak RSS MB", "self-test"]


def md_cells(row: dict[str, Any]) -> list[str]:
    if row.get("error"):
        return [row["artifact"], row.get("format", "?"), row.get("precision", "?"), row.get("runtime") or "n/a",
                row.get("device", "?"), str(row.get("threads", "")), f"{row.get('size_bytes', 0) / 1e6:.2f}",
                _millions(row.get("params")), _millions(row.get("macs")), f"error: {row['error']}"] + ["n/a"] * (len(MD_HEADER) - 10)
    s = latency_stats(row)
    return [
        row["artifact"], row["format"], row["precision"], row.get("runtime") or "n/a", row["device"], str(row["threads"]),
        f"{row['size_bytes'] / 1e6:.2f}", _millions(row.get("params")), _millions(row.get("macs")),
        _ci(row, "accuracy"), _ci(row, "macro_f1"), _ci(row, "auc_macro"), _delta(row),
        _f(row.get("top1_agreement"), "{:.3f}"),
        _f(s.get("median_ms")), f"{s['mean_ms']:.2f} ± {s['std_ms']:.2f}" if s else "n/a", _f(s.get("p90_ms")),
        _f(s.get("p99_ms")), _f(s.get("min_ms")), _f(row.get("load_ms"), "{:.0f}"), _f(row.get("peak_rss_mb"), "{:.0f}"),
        selftest_cell(row.get("selftest")),
    ]


def markdown(doc: dict[str, Any]) -> str:
    rows = doc["rows"]
    lines = ["| " + " | ".join(MD_HEADER) + " |", "|" + "|".join("---" for _ in MD_HEADER) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in md_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + legend(doc)


def legend(doc: dict[str, Any]) -> str:
    s = doc.get("settings", {})
    out = [f"Latency: batch 1, {s.get('warmup', '?')} warm-up runs not counted, then {s.get('runs', '?')} timed runs"
           + (f" (at least {s['min_seconds']} s)" if s.get("min_seconds") else "")
           + "; `perf_counter_ns` around invoke only; each artifact and thread count in its own process."]
    if any(r.get("macro_f1") is not None for r in doc["rows"]):
        out.append(f"Accuracy: {s.get('split', '?')} split, 95% CIs from {s.get('bootstrap', '?')} bootstrap resamples; "
                   "ΔF1 is the paired macro-F1 change against the FP32 reference on the same images.")
    for label, info in doc.get("devices", {}).items():
        out.append(f"Device `{label}`: {info.get('summary', info)}")
    if any(r.get("selftest") for r in doc["rows"]):
        out.append("Self-test: the golden images stored in each file, run before timing on that device; PASS/FAIL and the "
                   "largest probability difference against the conversion host's outputs of the same file.")

    notes: set[tuple[str, str]] = set()
    for r in doc["rows"]:
        if r.get("note"):
            notes.add((r["artifact"], r["note"]))
        if r.get("accuracy_note") and r.get("has_contract"):  # a foreign model's n/a is already in its note
            notes.add((r["artifact"], r["accuracy_note"]))
    notes = sorted(notes)
    out += [f"Note `{a}`: {n}" for a, n in notes]
    out += [f"Ship: {line}" for line in advice_lines(doc)]  # last: the line a user acts on
    return "\n".join(f"- {line}" for line in out)


def csv_text(doc: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in doc["rows"]:
        flat = dict(r)
        flat.update(latency_stats(r))
        flat["selftest"] = selftest_cell(r.get("selftest")) if r.get("selftest") else None
        for key in ("accuracy", "macro_f1", "auc_macro", "delta_macro_f1"):
            ci = r.get(f"{key}_ci95") or (None, None)
            flat[f"{key}_ci_lo"], flat[f"{key}_ci_hi"] = ci
        w.writerow({k: ("" if flat.get(k) is None else flat.get(k)) for k in CSV_COLUMNS})
    return buf.getvalue()


def readme_markdown(doc: dict[str, Any]) -> str:
    """One row per artifact and device, thread counts side by side: the table people quote."""
    threads = sorted({r["threads"] for r in doc["rows"] if r.get("threads")})
    head = ["model", "format", "precision", "runtime", "size MB", "params M", "MACs M", "macro-F1 [95% CI]", "ΔF1 pp vs FP32 [95% CI]",
            "top-1 agree", *[f"median ms {t}t (p90)" for t in threads], "load ms", "peak RSS MB", "self-test"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in doc["rows"]:
        groups.setdefault((r["path"], r.get("runtime_name") or r.get("runtime") or "", r.get("device", "host")), []).append(r)
    multi_device = len({d for _p, _r, d in groups}) > 1
    for (_path, _runtime, device), rows in groups.items():
        r0 = rows[0]
        by_t = {r["threads"]: latency_stats(r) for r in rows}
        lat = [f"{by_t[t]['median_ms']:.2f} ({by_t[t]['p90_ms']:.2f})" if by_t.get(t) else "n/a" for t in threads]
        name = r0["artifact"] + (f" @{device}" if multi_device else "")
        runtime = (r0.get("runtime") or "n/a").replace("onnxruntime", "ORT")
        lines.append("| " + " | ".join([name, r0["format"], r0["precision"], runtime, f"{r0['size_bytes'] / 1e6:.2f}",
                                         _millions(r0.get("params")), _millions(r0.get("macs")),
                                         _ci(r0, "macro_f1"), _delta(r0), _f(r0.get("top1_agreement"), "{:.3f}"), *lat,
                                         _f(r0.get("load_ms"), "{:.0f}"),
                                         _f(max((r.get("peak_rss_mb") or 0) for r in rows) or None, "{:.0f}"),
                                         selftest_cell(r0.get("selftest"))]) + " |")
    return "\n".join(lines) + "\n\n" + legend(doc)


def render(doc: dict[str, Any], fmt: str) -> str:
    if fmt == "md":
        return markdown(doc)
    if fmt == "readme":
        return readme_markdown(doc)
    if fmt == "csv":
        return csv_text(doc)
    return json.dumps({**doc, "rows": [{k: v for k, v in r.items() if k != "runs_ms"} for r in doc["rows"]]}, indent=2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Rebuild a table from bench.json.")
    p.add_argument("bench_json")
    p.add_argument("--format", choices=["md", "csv", "json", "readme"], default="md",
                   help="readme: one row per artifact, thread counts side by side")
    a = p.parse_args(argv)
    with open(a.bench_json, encoding="utf-8") as fh:
        sys.stdout.write(render(json.load(fh), a.format) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
