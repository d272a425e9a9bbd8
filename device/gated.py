"""One image file through the intended-use gate and then the runner's own classifier.

``--image``, ``--dir`` and ``serve`` all call :func:`classify_path`, so a DICOM file gets the
same header check and the same ``Classifier.classify_file`` wherever it arrives. The gate only
adds refusals: an accepted header still goes through the image-quality and "not a chest
X-ray" refusals of the decision layer.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from .classify import Classifier, Prediction
from .decision import refused
from .image_io import ImageError, dicom_gray, load_gray
from .intended_use import REFUSED, UNVERIFIED, GateResult, block_in_force, check, read_header
from .refusal import Refusal
from .runner_io import record

DICOM_SUFFIXES = (".dcm", ".dicom")


def is_dicom(path: str) -> bool:
    """By suffix, or by the ``DICM`` magic at byte 128 (modalities often write files without one)."""
    if os.path.splitext(path)[1].lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def refused_prediction(clf: Classifier, source: str, refusal: Refusal, timings: dict[str, float]) -> Prediction:
    """A result with no model run: NaN probabilities, the refusal as its verdict."""
    nan = np.full(len(clf.classes), np.nan)
    return Prediction(source, clf.classes, nan, timings, refused(refusal, clf.classes), clf.signature)


def _classify_file(clf: Classifier, path: str, source: str) -> tuple[Prediction, np.ndarray]:
    """What ``Classifier.classify_file`` does (``load_gray``, timed as ``decode_ms``, then
    ``classify_gray``), keeping the decoded image for the service's listeners."""
    t = time.perf_counter_ns()
    gray = load_gray(path)
    decode_ms = (time.perf_counter_ns() - t) / 1e6
    pred = clf.classify_gray(gray, source)
    pred.timings_ms = {"decode_ms": decode_ms, **pred.timings_ms}
    return pred, gray


def classify_path(clf: Classifier, path: str, source: str | None = None) -> tuple[Prediction, GateResult | None, np.ndarray | None]:
    """Gate (DICOM only), then the classifier: ``(prediction, gate result or None, decoded image or
    None when refused before decoding)``. Raises :class:`ImageError` for an unreadable file."""
    source = source or path
    if not is_dicom(path):
        pred, gray = _classify_file(clf, path, source)
        return pred, None, gray
    t = time.perf_counter_ns()
    try:
        header = read_header(path)
    except ValueError as exc:
        raise ImageError(str(exc)) from exc
    block, origin = block_in_force(clf.decision)
    gate = check(header, block, origin)
    gate.uids.update({key: str(header.get(tag)) for key, tag in (("sop_instance_uid", "SOPInstanceUID"),
                                                                 ("study_instance_uid", "StudyInstanceUID")) if header.get(tag)})
    gate_ms = (time.perf_counter_ns() - t) / 1e6
    if gate.status == REFUSED:
        return refused_prediction(clf, source, Refusal("intended_use", str(gate.reason)), {"gate_ms": gate_ms}), gate, None
    if "PixelData" not in header:
        raise ImageError(f"{path}: DICOM without pixel data (no PixelData element)")
    t = time.perf_counter_ns()
    gray = dicom_gray(header, path)  # the gate's dataset: the file is parsed once
    decode_ms = (time.perf_counter_ns() - t) / 1e6
    pred = clf.classify_gray(gray, source)
    pred.timings_ms = {"gate_ms": gate_ms, "decode_ms": decode_ms, **pred.timings_ms}
    return pred, gate, gray


def gated_record(pred: Prediction, gate: GateResult | None, top_k: int) -> dict[str, Any]:
    """The runner's ``--json`` object (``runner_io.record``) plus the gate's result for DICOM files."""
    out = record(pred, top_k)
    if gate is not None:
        out["intended_use"] = gate.to_dict()
        out.update(gate.uids)  # what the audit line records for a DICOM input (device/audit.py)
    return out


def gated_text(pred: Prediction, gate: GateResult | None, top_k: int) -> str:
    """The runner's text line, with the gate's note where a header rule could not be checked."""
    from .runner_io import text_line

    line = text_line(pred, top_k)
    return f"{line}  [{gate.line()}]" if gate is not None and gate.status == UNVERIFIED else line
