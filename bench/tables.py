"""Rows of ``bench.json`` -> the Markdown tables, ``bench.csv`` and the device legend.

Everything here works from the JSON alone, so any table can be rebuilt later:
``python -m edgecxr.bench.tables out/bench.json --format md [--columns all]``. Latency
statistics are recomputed from the raw per-run times, not copied.

The default table has the twelve columns a reader compares (about 120 characters
wide for the README's models, five runtimes included); ``--columns all`` prints the
full one, and ``bench.csv``/``bench.json`` always keep every column.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from typing import Any

from edgecxr.bench.advice import advice_lines, latency_stats
from edgecxr.device.selftest import selftest_cell

LATENCY_KEYS = ("mean_ms", "median_ms", "p90_ms", "p99_ms", "std_ms", "min_ms", "max_ms", "n_runs")

CSV_COLUMNS = [
    "artifact", "arch", "format", "precision", "runtime_name", "runtime", "device", "threads", "size_bytes", "params", "macs",
    "accuracy", "accuracy_ci_lo", "accuracy_ci_hi", "macro_f1", "macro_f1_ci_lo", "macro_f1_ci_hi",
    "auc_macro", "auc_macro_ci_lo", "auc_macro_ci_hi", "n_images", "reference", "delta_macro_f1_pp",
    "delta_macro_f1_ci_lo", "delta_macro_f1_ci_hi", "top1_agreement", *LATENCY_KEYS, "warmup", "load_ms", "peak_rss_mb",
    "rss_before_load_mb", "latency_input", "selftest", "cold_start_median_ms", "cold_start_first_process_ms",
    "first_inference_median_ms", "cpu_int8_target", "device_string", "pi_host_top1_agreement", "note", "accuracy_note", "error", "path",
]
COLUMN_SETS = ("compact", "all")
TABLE_FORMATS = ("text", "md", "csv", "json", "readme")


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


def _delta(row: dict[str, Any], ci_digits: int = 2) -> str:
    """The paired macro-F1 change with its CI; the compact table gives the CI to 0.1 point
    (``ci_digits=1``): a bootstrap over a few hundred images resolves no more."""
    d = row.get("delta_macro_f1_pp")
    if d is None:
        return "n/a"
    lo, hi = row.get("delta_macro_f1_ci95") or (None, None)
    return f"{d:+.2f} [{lo:+.{ci_digits}f}, {hi:+.{ci_digits}f}]" if lo is not None else f"{d:+.2f}"


def _millions(v: Any) -> str:
    return "n/a" if v is None else f"{v / 1e6:.2f}"


MD_HEADER = ["model", "format", "precision", "runtime", "device", "thr", "size MB", "params M", "MACs M",
             "accuracy [95% CI]", "macro-F1 [95% CI]", "AUC [95% CI]", "ΔF1 pp vs FP32 [95% CI]", "top-1 agree",
             "median ms", "mean ± std ms", "p90 ms", "p99 ms", "min ms", "load ms", "peak RSS MB", "self-test",
             "cold start ms", "1st inference ms"]


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
        selftest_cell(row.get("selftest")), *cold_cells(row),
    ]


def cold_cells(row: dict[str, Any]) -> list[str]:
    """Cold start (median of fresh processes, start to first verdict) and the first warm inference, ms."""
    if row.get("cold_start_error"):
        return ["error", "n/a"]
    return [_f(row.get("cold_start_median_ms"), "{:.0f}"), _f(row.get("first_inference_median_ms"))]


def has_cold_start(rows: list[dict[str, Any]]) -> bool:
    return any(r.get("cold_start_median_ms") is not None or r.get("cold_start_error") for r in rows)


COMPACT_HEADER = ["model", "format", "prec", "runtime", "thr", "MB", "macro-F1", "ΔF1 pp [95% CI]", "agree",
                  "median", "p90", "self-test"]
COMPACT_RIGHT = {"thr", "MB", "macro-F1", "ΔF1 pp [95% CI]", "agree", "median", "p90", "cold", "1st"}


def model_labels(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The model column: the architecture, plus the folder that tells trainings apart when one
    architecture comes from several checkpoints (two MobileNetV2 runs side by side). A
    checkpoint and the files converted from it are one model."""
    def origin(r: dict[str, Any]) -> str:
        return os.path.dirname(os.path.realpath(r.get("source_checkpoint") or r["path"]))

    origins: dict[str, set[str]] = {}
    for r in rows:
        origins.setdefault(r.get("arch") or r["artifact"], set()).add(origin(r))
    labels = {}
    for r in rows:
        arch = r.get("arch") or r["artifact"]
        tags = _distinguishing_parts(sorted(origins[arch])) if len(origins[arch]) > 1 else {}
        labels[r["path"]] = f"{arch} ({tags[origin(r)]})" if tags else arch
    return labels


def _distinguishing_parts(folders: list[str]) -> dict[str, str]:
    """For each folder, the nearest path component (counting up from the file) that differs."""
    parts = {f: f.strip(os.sep).split(os.sep) for f in folders}
    for k in range(1, max(len(p) for p in parts.values()) + 1):
        tags = {f: p[-k] if len(p) >= k else "" for f, p in parts.items()}
        if len(set(tags.values())) == len(folders):
            return tags
    return {f: f for f in folders}


def compact_cells(row: dict[str, Any], label: str) -> list[str]:
    s = {} if row.get("error") else latency_stats(row)
    selftest = "error" if row.get("error") else "skipped" if row.get("skipped") else selftest_cell(row.get("selftest")).split(" ")[0]
    return [label, row.get("format", "?"), row.get("precision", "?"), row.get("runtime_name") or row.get("runtime") or "n/a",
            str(row.get("threads", "?")), f"{row.get('size_bytes', 0) / 1e6:.2f}", _f(row.get("macro_f1"), "{:.3f}"),
            _delta(row, ci_digits=1), _f(row.get("top1_agreement"), "{:.3f}"), _f(s.get("median_ms")), _f(s.get("p90_ms")), selftest]


def aligned_table(header: list[str], rows: list[list[str]], right: set[str] = frozenset(), style: str = "md") -> list[str]:
    """Columns padded to their widest cell: a Markdown table (``md``), or plain text
    (``text``) two spaces apart, which is 37 characters narrower with twelve columns."""
    rows = [[c.replace("|", "/") for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    if style == "text":
        def pad(cells: list[str]) -> str:
            return "  ".join(c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(cells, widths, header)).rstrip()

        return [pad(header), pad(["-" * w for w in widths]), *(pad(r) for r in rows)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(cells, widths, header)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if h in right else "-" * (w + 2) for w, h in zip(widths, header)) + "|"
    return [line(header), rule, *(line(r) for r in rows)]


def compact_markdown(doc: dict[str, Any], style: str = "md") -> str:
    """The default table: model, format, precision, runtime, threads, size, macro-F1, its change
    with CI, agreement, median and p90 latency, self-test (a device column when there are several)."""
    rows = doc["rows"]
    labels = model_labels(rows)
    header, cells = list(COMPACT_HEADER), [compact_cells(r, labels[r["path"]]) for r in rows]
    if has_cold_start(rows):  # beside the steady-state median and p90
        at = header.index("p90") + 1
        header[at:at] = ["cold", "1st"]
        for c, r in zip(cells, rows):
            c[at:at] = cold_cells(r)
    if len({r.get("device", "host") for r in rows}) > 1:
        header.insert(4, "device")
        for c, r in zip(cells, rows):
            c.insert(4, r.get("device", "host"))
    return "\n".join(aligned_table(header, cells, COMPACT_RIGHT, style)) + "\n\n" + legend(doc, compact=True, pointer=True)


def markdown(doc: dict[str, Any], columns: str = "compact", style: str = "md") -> str:
    """``compact``: :func:`compact_markdown`; ``all``: every table column, one row per measurement.
    ``style``: Markdown, or plain text for a terminal (see :func:`aligned_table`)."""
    if columns == "compact":
        return compact_markdown(doc, style)
    table = aligned_table(MD_HEADER, [md_cells(r) for r in doc["rows"]], style=style)
    return "\n".join(table) + "\n\n" + legend(doc)


def _runtime_versions(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, list[str]] = {}
    for r in rows:
        name, full = r.get("runtime_name"), r.get("runtime")
        if name and full and full not in seen.setdefault(name, []):
            seen[name].append(full)
    return [f"`{name}` = {' / '.join(v)}" for name, v in seen.items()]


def legend(doc: dict[str, Any], compact: bool = False, pointer: bool = False) -> str:
    """The lines under a table. ``compact``: also what each runtime name is and the errors
    the table only flags; ``pointer``: where the columns it leaves out are."""
    s = doc.get("settings", {})
    out = [f"Latency (ms): batch 1, {s.get('warmup', '?')} warm-up runs not counted, then {s.get('runs', '?')} timed runs"
           + (f" (at least {s['min_seconds']} s)" if s.get("min_seconds") else "")
           + "; `perf_counter_ns` around invoke only; each artifact and thread count in its own process."]
    if has_cold_start(doc["rows"]):
        out.append(f"Cold start (ms): median of {s.get('cold_start_runs', '?')} fresh runner processes (`device/coldstart.py`), "
                   "process start to the first verdict on stdout (import, runtime and model load, self-test, first inference), "
                   "at the row group's lowest thread count, file cache warm after the first; 1st: that first inference "
                   "(invoke on the image after the self-test), median over the processes.")
    if any(r.get("macro_f1") is not None for r in doc["rows"]):
        out.append(f"Accuracy: {s.get('split', '?')} split, 95% CIs from {s.get('bootstrap', '?')} bootstrap resamples; "
                   "ΔF1 is the paired macro-F1 change against the FP32 reference on the same images.")
    for label, info in doc.get("devices", {}).items():
        out.append(f"Device `{label}`: {info.get('summary', info)}")
    if compact and _runtime_versions(doc["rows"]):
        out.append("Runtimes: " + "; ".join(_runtime_versions(doc["rows"])) + ".")
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
    if compact:
        errors = dict.fromkeys((r["artifact"], r.get("runtime_name") or "?", r["error"]) for r in doc["rows"] if r.get("error"))
        out += [f"Error `{a}` ({rt}): {e}" for a, rt, e in errors]
    if pointer:
        out.append("More columns (accuracy and AUC with CIs, params, MACs, mean ± std, p99, min, load time, peak RSS): "
                   "`--columns all`; every column and the raw per-run times are in bench.csv and bench.json.")
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
    cold = has_cold_start(doc["rows"])
    head += ["cold start ms", "1st inference ms"] if cold else []
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
        runtime = r0.get("runtime_name") or r0.get("runtime") or "n/a"
        lines.append("| " + " | ".join([name, r0["format"], r0["precision"], runtime, f"{r0['size_bytes'] / 1e6:.2f}",
                                         _millions(r0.get("params")), _millions(r0.get("macs")),
                                         _ci(r0, "macro_f1"), _delta(r0), _f(r0.get("top1_agreement"), "{:.3f}"), *lat,
                                         _f(r0.get("load_ms"), "{:.0f}"),
                                         _f(max((r.get("peak_rss_mb") or 0) for r in rows) or None, "{:.0f}"),
                                         selftest_cell(r0.get("selftest")), *(cold_cells(r0) if cold else [])]) + " |")
    return "\n".join(lines) + "\n\n" + legend(doc, compact=True)


def render(doc: dict[str, Any], fmt: str, columns: str = "compact") -> str:
    """``columns`` picks the ``md`` table's columns; csv and json always carry every one."""
    if fmt in ("md", "text"):
        return markdown(doc, columns, style=fmt)
    if fmt == "readme":
        return readme_markdown(doc)
    if fmt == "csv":
        return csv_text(doc)
    return json.dumps({**doc, "rows": [{k: v for k, v in r.items() if k != "runs_ms"} for r in doc["rows"]]}, indent=2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Rebuild a table from bench.json.")
    p.add_argument("bench_json")
    p.add_argument("--format", choices=TABLE_FORMATS, default="md",
                   help="text: aligned plain text for a terminal; readme: one row per artifact, thread counts side by side")
    p.add_argument("--columns", choices=COLUMN_SETS, default="compact",
                   help="text and md tables: compact (the columns people compare, ~120 characters as text) or all (every table column)")
    a = p.parse_args(argv)
    with open(a.bench_json, encoding="utf-8") as fh:
        sys.stdout.write(render(json.load(fh), a.format, a.columns) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
