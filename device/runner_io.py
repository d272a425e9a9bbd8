"""How the Pi runner shows results: a text line, a JSON object, a CSV row.

Kept apart from the runner so the formats are defined once and tests can parse
exactly what a person or a script on the Pi sees. Standard library and numpy only.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from typing import IO, Any, Iterable

from .classify import Classifier, Prediction
from .decision import summary as decision_summary


def describe(clf: Classifier) -> str:
    """The header line: model, format, precision, tensors, runtime, decision (serve logs it too)."""
    b, c = clf.backend, clf.backend.contract
    shape = "x".join(str(v) for v in b.input_shape)
    line = (f"model {os.path.basename(b.path)}: {c.arch} {b.format} {c.precision}, {len(clf.classes)} classes, "
            f"input {shape} {b.input_dtype} {b.layout}, runtime {b.runtime}")
    return f"{line}; {decision_summary(c.decision)}" if c.decision else line


def record(pred: Prediction, top_k: int) -> dict[str, Any]:
    """The ``--json`` object: ``latency_ms`` is the model's invoke() alone; the rest of
    the runner's work is itemised in ``timings_ms``."""
    out = {
        "file": pred.source,
        "label": pred.label,
        "probabilities": {c: round(float(p), 7) for c, p in zip(pred.classes, pred.probabilities)} if pred.ran_model else None,
        "top_k": [{"label": c, "probability": round(p, 7)} for c, p in pred.top_k(top_k)],
        "latency_ms": round(pred.timings_ms.get("inference_ms", float("nan")), 4),
        "timings_ms": {k: round(v, 4) for k, v in pred.timings_ms.items()},
    }
    if pred.verdict is not None:
        out.update(pred.verdict.to_dict())
    if pred.ood_score is not None:
        out["ood_score"] = round(pred.ood_score, 6)
    out["signature"] = pred.signature
    return out


def text_line(pred: Prediction, top_k: int) -> str:
    """``file: LABEL  [top-k]  set {..}  timings  signature``; a refer or refusal replaces ``set`` by its
    plain-language decision, and a refusal prints no label."""
    t = pred.timings_ms
    overhead = sum(v for k, v in t.items() if k != "inference_ms")
    times = f"inference {t.get('inference_ms', 0):.2f} ms, runner {overhead:.2f} ms  {pred.signature}"  # "unsigned" or "signed"
    v = pred.verdict
    if v is not None and pred.label is None:
        return f"{pred.source}: {v.line()}  {times}"
    top = ", ".join(f"{c} {p:.4f}" for c, p in pred.top_k(top_k))
    decision = ""
    if v is not None:
        decision = f"  set {{{', '.join(v.prediction_set)}}}" if v.label is not None else f"  {v.line()}"
    return f"{pred.source}: {pred.label}  [{top}]{decision}  {times}"


def emit(obj: dict[str, Any] | str, stream: IO[str] | None = None) -> None:
    """One line, flushed at once so a pipe or journald sees every frame as it happens."""
    stream = stream or sys.stdout
    stream.write((json.dumps(obj) if isinstance(obj, dict) else obj) + "\n")
    stream.flush()


def warn(message: str) -> None:
    emit(f"edgecxr-runner: {message}", sys.stderr)


def write_csv(path: str, classes: Iterable[str], rows: list[dict[str, Any]]) -> None:
    """One row per file (read or skipped), written to a temp file and renamed so a
    half-written CSV never appears. Skipped files keep their reason in ``error``."""
    classes = list(classes)
    fields = ["file", "label", *[f"p_{c}" for c in classes], "action", "reason", "prediction_set", "latency_ms", "decode_ms",
              "preprocess_ms", "error", "signature"]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".csv", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            for r in rows:
                if "error" in r:
                    writer.writerow({"file": r["file"], "error": r["error"]})
                    continue
                t = r["timings_ms"]
                probs = r["probabilities"] or {}
                writer.writerow({"file": r["file"], "label": r["label"] or "",
                                 **{f"p_{c}": f"{probs[c]:.7f}" if c in probs else "" for c in classes},
                                 "action": r.get("action", ""), "reason": r.get("reason", ""),
                                 "prediction_set": " ".join(r.get("prediction_set", [])),
                                 "latency_ms": f"{r['latency_ms']:.4f}", "decode_ms": f"{t.get('decode_ms', 0):.4f}",
                                 "preprocess_ms": f"{t.get('preprocess_ms', 0) + t.get('quantize_ms', 0):.4f}", "error": "",
                                 "signature": r.get("signature", "")})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
