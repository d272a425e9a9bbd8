"""What ``eval`` and ``bench`` say about a model's probabilities and prediction sets.

One function turns logits on labelled images plus the model's decision block into
the ``calibration`` and ``conformal`` sections of a report (calibration before and
after temperature scaling, with bootstrap CIs, and the reliability-diagram bins;
empirical coverage and set sizes, overall and per class), and one formats them for
a terminal, so every command reports them the same way.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from edgecxr.decide.fit import coverage_report
from edgecxr.decide.reliability import METRICS, calibration_metrics, reliability_bins
from edgecxr.device.decision import calibrated_probabilities, temperature

LABELS = {"ece": "ECE (15 bins)", "adaptive_ece": "adaptive ECE", "brier": "Brier", "nll": "NLL"}


def model_logits(backend: Any, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """float64 logits of a preprocessed batch, in slices (any backend)."""
    return np.concatenate([backend.predict(x[i : i + batch_size]).astype(np.float64) for i in range(0, len(x), batch_size)])


def calibration_section(logits: np.ndarray, y: np.ndarray, block: dict[str, Any] | None, n_boot: int = 1000) -> dict[str, Any]:
    """Calibration of softmax(logits) and, where the model carries a temperature, of softmax(logits / T)."""
    raw = calibrated_probabilities(logits, None)
    out: dict[str, Any] = {"temperature": None, "before": calibration_metrics(raw, y, n_boot),
                           "reliability": {"before": reliability_bins(raw, y)}}
    if block and "temperature" in block:
        scaled = calibrated_probabilities(logits, block)
        out["temperature"] = temperature(block)
        out["after"] = calibration_metrics(scaled, y, n_boot)
        out["reliability"]["after"] = reliability_bins(scaled, y)
    return out


def conformal_section(logits: np.ndarray, y: np.ndarray, classes: list[str], block: dict[str, Any] | None) -> dict[str, Any] | None:
    """Coverage and set sizes of the contract's conformal sets; ``None`` where none was fitted."""
    if not block or not block.get("conformal"):
        return None
    return coverage_report(calibrated_probabilities(logits, block), y, classes, block["conformal"])


def reasons_section(logits: np.ndarray, y: np.ndarray, classes: list[str], block: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the device says about each image, by reason (answer, uncertain, unfamiliar, not a CXR), overall
    and per true class, and how often an answer is right: the numbers a clinic meets. ``None`` without a
    decision block. The image-quality check needs the decoded file, not the logits: sitecheck and the
    runner count it; here it is 0 by construction."""
    from edgecxr.device.decision import ANSWER, decide, reason_shares

    if not block:
        return None
    y = np.asarray(y, dtype=int)
    verdicts = [decide(z, classes, block) for z in np.asarray(logits, dtype=np.float64)]
    kinds = [v.reason_kind for v in verdicts]
    answered = np.array([v.action == ANSWER for v in verdicts], dtype=bool)
    right = np.array([v.label == classes[t] for v, t in zip(verdicts, y)], dtype=bool)
    per_class = {c: {"n": int((y == i).sum()), **reason_shares([k for k, t in zip(kinds, y) if t == i])}
                 for i, c in enumerate(classes) if (y == i).any()}
    return {"n": len(kinds), "overall": reason_shares(kinds), "per_class": per_class, "n_answered": int(answered.sum()),
            "answered_accuracy": float(right[answered].mean()) if answered.any() else float("nan")}


def decision_sections(logits: np.ndarray, y: np.ndarray, classes: list[str], block: dict[str, Any] | None,
                      n_boot: int = 1000) -> dict[str, Any]:
    return {"calibration": calibration_section(logits, y, block, n_boot), "conformal": conformal_section(logits, y, classes, block),
            "reasons": reasons_section(logits, y, classes, block)}


def format_reasons(sec: dict[str, Any] | None) -> list[str]:
    """Terminal lines: the share of each reason, overall and per true class."""
    if not sec:
        return []
    from edgecxr.device.decision import REASON_KINDS

    head = f"  {'':<18}{'n':>5}" + "".join(f"{k:>12}" for k in REASON_KINDS[:4])
    rows = [("all", sec["n"], sec["overall"])] + [(c, v["n"], v) for c, v in sec["per_class"].items()]
    return ["", f"what the device says (answered {sec['n_answered']} of {sec['n']}, accuracy when answered "
                f"{sec['answered_accuracy']:.4f})", head] + [
        f"  {name:<18}{n:>5}" + "".join(f"{100 * s[k]:>11.1f}%" for k in REASON_KINDS[:4]) for name, n, s in rows]


def _metric(m: dict[str, Any]) -> str:
    lo, hi = m["ci95"]
    return f"{m['value']:.4f} [{lo:.4f}, {hi:.4f}]"


def format_sections(sections: dict[str, Any]) -> str:
    """Terminal lines: one row per calibration metric, then coverage per class."""
    cal = sections["calibration"]
    t = cal["temperature"]
    after_head = f"after T={t:.4f}" if t is not None else "after (no T fitted: run `edgecxr calibrate`)"
    lines = ["", f"calibration (95% bootstrap CI)   {'before':<26}{after_head}"]
    for key in METRICS:
        after = _metric(cal["after"][key]) if "after" in cal else "-"
        lines.append(f"  {LABELS[key]:<30}{_metric(cal['before'][key]):<26}{after}")
    lines += format_reasons(sections.get("reasons"))
    conf = sections.get("conformal")
    if conf is None:
        lines.append("conformal sets: none fitted (run `edgecxr calibrate`)")
        return "\n".join(lines)
    lo, hi = conf["coverage_ci95"]
    lines += ["", f"conformal {conf['method']} sets at target coverage {conf['target_coverage']} (qhat {conf['qhat']:.6f}): "
              f"coverage {conf['coverage']:.4f} [{lo:.4f}, {hi:.4f}], mean set size {conf['mean_set_size']:.3f}, "
              f"refer {conf['refer'] * 100:.1f}% (empty {conf['empty'] * 100:.1f}%), accuracy when answered {conf['answered_accuracy']:.4f}"]
    head = f"  {'class':<18}{'n':>5}{'coverage':>10}{'95% CI':>18}{'set size':>10}{'refer':>8}"
    lines += [head]
    for name, s in conf["per_class"].items():
        lo, hi = s["coverage_ci95"]
        lines.append(f"  {name:<18}{s['n']:>5}{s['coverage']:>10.4f}{f'[{lo:.3f}, {hi:.3f}]':>18}{s['mean_set_size']:>10.3f}{s['refer'] * 100:>7.1f}%")
    return "\n".join(lines)


def ece_change(ref_logits: np.ndarray, logits: np.ndarray, y: np.ndarray, block: dict[str, Any] | None) -> dict[str, Any]:
    """How an artifact's 15-bin ECE differs from its FP32 reference's on the same images:
    with the contract's temperature where it has one (what the device shows), and raw."""
    from edgecxr.decide.reliability import ece

    y = np.asarray(y, dtype=int)
    out: dict[str, Any] = {}
    for key, b in (("raw", None), ("scaled", block if block and "temperature" in block else None)):
        if key == "scaled" and b is None:
            continue
        e, e_ref = ece(calibrated_probabilities(logits, b), y), ece(calibrated_probabilities(ref_logits, b), y)
        out[key] = {"ece": e, "ece_reference": e_ref, "delta": e - e_ref}
    if "scaled" in out:
        out["temperature"] = temperature(block)
    return out


def from_probabilities(probs: np.ndarray, y: np.ndarray, classes: list[str], block: dict[str, Any] | None,
                       n_boot: int = 1000) -> dict[str, Any]:
    """The sections for a tool that kept only softmax outputs (bench): log(softmax(z)) = z - c,
    and softmax is blind to the constant, so T and the sets apply exactly (zeros clipped)."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, 1.0))
    cal = calibration_section(logits, y, block, n_boot)
    cal.pop("reliability")
    return {"calibration": cal, "conformal": conformal_section(logits, y, classes, block)}


def _reasons_cell(sec: dict[str, Any] | None) -> str:
    if not sec:
        return "-"
    o = sec["overall"]
    return " / ".join(f"{100 * o[k]:.1f}%" for k in ("answer", "uncertain", "unfamiliar", "not_cxr"))


def bench_markdown(rows: list[dict[str, Any]]) -> str:
    """bench.md's calibration table: one row per model file with accuracy measured."""
    lines = []
    for r in rows:
        sec = r.get("decision")
        if not sec or r.get("path") in {x[0] for x in lines}:
            continue
        cal, conf = sec["calibration"], sec.get("conformal")
        after = cal.get("after")
        t = f"{cal['temperature']:.3f}" if cal.get("temperature") else "-"
        cells = [os.path.basename(r["path"]), t, _metric(cal["before"]["ece"]), _metric(after["ece"]) if after else "-",
                 _metric(after["adaptive_ece"]) if after else "-", f"{(after or cal['before'])['brier']['value']:.4f}",
                 f"{(after or cal['before'])['nll']['value']:.4f}",
                 f"{conf['coverage']:.3f}" if conf else "-", f"{conf['mean_set_size']:.3f}" if conf else "-", _reasons_cell(sec.get("reasons"))]
        lines.append((r["path"], "| " + " | ".join(cells) + " |"))
    if not lines:
        return ""
    head = ["", "Calibration (test images; 15-bin ECE with 95% bootstrap CI; after = softmax(logits / T) with the model's T; "
            "coverage of its conformal sets):", "",
            "| model file | T | ECE before | ECE after | adaptive ECE after | Brier | NLL | coverage | mean set size "
            "| answered / uncertain / unfamiliar / not a CXR |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(head + [line for _p, line in lines]) + "\n"
