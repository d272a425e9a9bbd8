"""``convert_report.json`` / ``convert_report.md``: what convert made and how faithful it is.

The JSON is for tools (bench, the demo, CI); the Markdown table is the same
numbers for a person, and the terminal table printed at the end of
``edgecxr convert`` is built by the same function.
"""
from __future__ import annotations

import datetime as _dt
import os
from typing import Any

from edgecxr.device.atomic import write_json, write_text
from edgecxr.device.contract import Contract

REPORT_JSON = "convert_report.json"
REPORT_MD = "convert_report.md"
SCHEMA = "edgecxr.convert_report/1"


def gate(steps: list[dict[str, Any]], max_drop: float | None) -> dict[str, Any]:
    """``--max-drop``: every verified INT8 artifact must keep macro-F1 within ``max_drop`` points.

    An INT8 artifact that failed or could not be verified also fails the gate: a
    user who asked for the check must not get a pass for a model nobody measured.
    """
    if max_drop is None:
        return {"max_drop_pp": None, "passed": True, "failures": []}
    failures = []
    for s in steps:
        if s["precision"] != "int8":
            continue
        v = s.get("verify")
        if s["status"] not in ("ok", "degraded") or not v:
            failures.append(f"{s['file']}: not verified ({s['reason'] or s['status']})")
        elif v["delta_macro_f1_pp"] < -max_drop:
            failures.append(f"{s['file']}: macro-F1 {v['delta_macro_f1_pp']:+.2f} pp (allowed -{max_drop:g})")
    return {"max_drop_pp": max_drop, "passed": not failures, "failures": failures}


def build_report(*, ckpt: str, sha256: str, contract: Contract, out_dir: str, steps: list[dict[str, Any]],
                 calibration: dict | None, verification: dict | None, max_drop: float | None, keep_float: list[str],
                 versions: dict[str, str], seconds: float, host_cpu: dict[str, Any] | None = None,
                 int8_target: dict[str, Any] | None = None, options: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """``options``: how each artifact was produced, from the formats table, for a reader of the report."""
    from edgecxr.eval.tolerance import MAX_DROP_PP, MIN_AGREEMENT

    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": os.path.abspath(ckpt),
        "checkpoint_sha256": sha256,
        "arch": contract.arch,
        "classes": list(contract.classes),
        "input_size": contract.input_size,
        "out_dir": os.path.abspath(out_dir),
        "calibration": calibration,
        "keep_float": keep_float,
        "verification": verification,
        "artifacts": steps,
        "gate": gate(steps, max_drop),
        "tolerance": {"min_top1_agreement": MIN_AGREEMENT, "max_macro_f1_drop_pp": MAX_DROP_PP},
        "degraded": [f"{s['file']}: {s['reason']}" for s in steps if s["status"] == "degraded"],
        "host_cpu": host_cpu,
        "how_produced": options or {},
        "int8_target": int8_target,
        "versions": versions,
        "seconds": round(seconds, 2),
    }


def _fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for s in report["artifacts"]:
        v = s.get("verify") or {}
        out.append([
            s["file"], s["status"] if s["status"] == "ok" else s["status"].upper(), _fmt(s["bytes"] / 1e6 if s["bytes"] else None, ".2f"), _fmt(s["seconds"], ".1f"),
            _fmt(v.get("max_abs_logit_diff"), ".4f"), _fmt(100 * v["top1_agreement"] if v else None, ".1f"),
            _fmt(v.get("accuracy"), ".4f"), _fmt(v.get("macro_f1"), ".4f"), _fmt(v.get("delta_macro_f1_pp"), "+.2f"),
            s["reason"],
        ])
    return out


HEADER = ["artifact", "status", "MB", "s", "max abs dlogit", "top1 agree %", "accuracy", "macro-F1", "dF1 pp", "note"]


def terminal_table(report: dict[str, Any]) -> str:
    table = [HEADER] + rows(report)
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER) - 1)]
    lines = []
    for j, r in enumerate(table):
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + ("  " + r[-1] if r[-1] else ""))
        if j == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Conversion report: {report['arch']}", "",
             f"- checkpoint: `{report['checkpoint']}` (sha256 `{report['checkpoint_sha256'][:16]}...`)",
             f"- classes: {', '.join(report['classes'])}; input {report['input_size']} px"]
    lines += host_lines(report)
    cal = report.get("calibration")
    if cal:
        counts = ", ".join(f"{k} {v}" for k, v in cal["class_counts"].items())
        lines.append(f"- INT8 calibration: {cal['images']} real images from {cal['origin']} ({counts}), method {cal['method']}")
    if report.get("keep_float"):
        lines.append(f"- kept in float: {', '.join(report['keep_float'])}")
    ver = report.get("verification")
    if ver:
        ref = ver["reference"]
        lines.append(f"- verification: {ver['images']} images from {ver['origin']}; PyTorch reference accuracy "
                     f"{ref['accuracy']:.4f}, macro-F1 {ref['macro_f1']:.4f}")
    else:
        lines.append("- verification: not run (no verification images)")
    g = report["gate"]
    if g["max_drop_pp"] is not None:
        lines.append(f"- gate --max-drop {g['max_drop_pp']:g} pp: " + ("passed" if g["passed"] else "FAILED: " + "; ".join(g["failures"])))
    lines += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows(report)]
    lines += ["", "dF1 pp: macro-F1 change against the PyTorch checkpoint on the same images, in percentage points.",
              ""]
    lines += calibration_lines(report)
    from edgecxr.convert.accuracy_control import report_lines

    lines += report_lines(report)  # --accuracy-control: layers kept in float, their latency cost, the final drop
    for fmt, how in (report.get("how_produced") or {}).items():
        lines += [f"- {fmt} {p}: {text}" for p, text in how.items()]
    lines += ["", "Tool versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    return "\n".join(lines)


def calibration_lines(report: dict[str, Any]) -> list[str]:
    """ECE of each artifact against the FP32 checkpoint on the verification images (15 bins;
    with the contract's temperature where it has one, as the device applies it)."""
    out = []
    for s in report["artifacts"]:
        cal = (s.get("verify") or {}).get("calibration") or {}
        for key, what in (("scaled", f"softmax(logits / T), T={cal.get('temperature', 0):.4f}"), ("raw", "plain softmax")):
            if key in cal:
                c = cal[key]
                out.append(f"| {s['file']} | {what} | {c['ece']:.4f} | {c['ece_reference']:.4f} | {c['delta']:+.4f} |")
    if not out:
        return []
    head = ["## Calibration against FP32 (verification images, 15-bin ECE)", "",
            "| artifact | probabilities | ECE | FP32 ECE | change |", "|---|---|---|---|---|"]
    return head + out + [""]


def host_lines(report: dict[str, Any]) -> list[str]:
    """The conversion host's CPU and the INT8 target, as Markdown bullets."""
    from edgecxr.device.cpufeatures import features_string

    out = []
    cpu = report.get("host_cpu")
    if cpu:
        out.append(f"- converted on: {cpu['model']}, {features_string(cpu)}")
    t = report.get("int8_target")
    if t:
        where = "every CPU" if not t.get("valid_on") else " or ".join(
            (r["arch"] + (" with " + "/".join(r["any_of"]) if r.get("any_of") else "")) for r in t["valid_on"])
        out.append(f"- INT8 target `{t['name']}` for ONNX Runtime: {t['int8_scheme']}; exact on {where}. TFLite INT8 is exact on every CPU.")
    tol = report.get("tolerance")
    if tol:
        out.append(f"- default tolerance: top-1 agreement >= {100 * tol['min_top1_agreement']:g}% and macro-F1 drop <= "
                   f"{tol['max_macro_f1_drop_pp']:g} pp (at least 2 flipped images); outside it an artifact is DEGRADED")
    return out


def verify_line(step: dict[str, Any]) -> str:
    v = step.get("verify")
    if not v:
        return f"  verify  {step['file']}: {step['reason'] or 'not verified'}"
    line = (f"  verify  {step['file']:<28} max|dlogit| {v['max_abs_logit_diff']:.4f}  top-1 agree {100 * v['top1_agreement']:.1f}%  "
            f"macro-F1 {v['macro_f1']:.4f} ({v['delta_macro_f1_pp']:+.2f} pp)  [{v['runtime']}]")
    cal = v.get("calibration") or {}
    e = cal.get("scaled") or cal.get("raw")
    if e:
        line += f"  ECE {e['ece']:.4f} ({e['delta']:+.4f} vs FP32{', T applied' if 'scaled' in cal else ''})"
    if step["status"] != "ok":
        line += f"  !! {step['status'].upper()}: {step['reason']}"
    return line


def write_report(report: dict[str, Any], out_dir: str) -> tuple[str, str]:
    j, m = os.path.join(out_dir, REPORT_JSON), os.path.join(out_dir, REPORT_MD)
    write_json(j, report)
    write_text(m, markdown(report))
    return j, m
