"""Drawn images added to INT8 calibration so the carried OOD score keeps its range.

The OOD score rides in the logits (``edgecxr/decide/ood_head.py``): ``r`` is the feature
distance, clipped to the head's cap (4). A full-integer file quantizes every tensor of that
path with the range its calibration images produced, and 300 training CXRs reach only about
1.5, their own largest score, which is also where the not-a-CXR cut sits. Measured on the
README's MobileNetV2 (docs/results/decision.md): every photo then saturates at 1.45-1.47 in both
the INT8 TFLite and the INT8 ONNX file, ties with the cut and is referred instead of refused, so
the INT8 files refused 11-51% of each non-CXR group where FP32 refused 67-99%.

So where the model carries the head, a few drawn patterns (gradients, stripes, checkerboards,
rings: nothing any CXR or the non-CXR evaluation set contains) whose FP32 score reaches the cap
are appended to the calibration tensors the quantizers see. They stretch only the ranges they
exceed: ReLU6 bounds the backbone's activations anyway, and the logits' range grows by the cap.
They have no class: counts, reports and accuracy control's labels never see them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edgecxr.data.imageset import LabelledImages
from edgecxr.device.preprocess import PreprocessSpec, normalize, prepare_gray

SIDE = 256


def drawn_patterns(side: int = SIDE) -> dict[str, np.ndarray]:
    """Deterministic uint8 patterns (no randomness, no files)."""
    yy, xx = np.mgrid[0:side, 0:side]
    radius = np.hypot(yy - side / 2, xx - side / 2)
    return {
        "horizontal gradient": (xx * 255 // (side - 1)).astype(np.uint8),
        "vertical gradient": (yy * 255 // (side - 1)).astype(np.uint8),
        "stripes 8 px": ((xx // 8) % 2 * 255).astype(np.uint8),
        "checkerboard 16 px": (((yy // 16 + xx // 16) % 2) * 255).astype(np.uint8),
        "checkerboard 32 px": (((yy // 32 + xx // 32) % 2) * 255).astype(np.uint8),
        "rings": ((np.sin(radius / 4) + 1) * 127).astype(np.uint8),
    }


@dataclass
class AnchoredCalibration(LabelledImages):
    """Calibration images plus the anchors, appended only to what ``nchw`` hands a quantizer."""

    anchors: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1), np.uint8))  # prepared uint8, no class

    @property
    def x(self) -> np.ndarray:
        """The labelled images only (``y`` matches it row for row)."""
        if self._x is None:
            self._x = LabelledImages.nchw(self, self.spec)
        return self._x

    def nchw(self, spec: PreprocessSpec | None = None) -> np.ndarray:
        x = super().nchw(spec)
        if not len(self.anchors):
            return x
        spec = spec or self.spec
        return np.concatenate([x, np.stack([normalize(g, spec) for g in self.anchors]).astype(np.float32)])

    def describe(self) -> str:
        return super().describe() + (f" + {len(self.anchors)} drawn OOD-score range anchors" if len(self.anchors) else "")


def carried_score(torch_model: Any, x: np.ndarray) -> np.ndarray:
    """The head's score as the device reads it from the logits (``device/ood.py``)."""
    from edgecxr.convert.reference import torch_logits
    from edgecxr.device.ood import ood_scores

    return ood_scores(torch_logits(torch_model, x), {"method": "feature_mahalanobis"})


def with_score_anchors(calib: LabelledImages, torch_model: Any, echo: Callable[[str], None]) -> LabelledImages:
    """``calib`` with the drawn patterns whose FP32 score reaches the head's cap (or, failing
    that, exceeds every calibration image's: only then are the calibration images scored, a
    full FP32 pass); unchanged for a model without the head."""
    from edgecxr.decide.ood_head import OodHead

    head = getattr(torch_model, "head", None)
    if not isinstance(head, OodHead):
        return calib
    grays = [prepare_gray(g, calib.spec) for g in drawn_patterns().values()]
    scores = carried_score(torch_model, np.stack([normalize(g, calib.spec) for g in grays]))
    cap = head.cap
    keep, reach = [i for i, s in enumerate(scores) if s >= cap - 1e-3], f"at the head's clip, {cap:g}"
    if not keep:
        top = float(carried_score(torch_model, calib.nchw()).max())
        keep = [i for i, s in enumerate(scores) if s > top]
        reach = f"above the calibration images' largest, {top:.2f} (the head clips at {cap:g})"
    echo(f"calibration: {len(keep)} drawn OOD-score range anchors (FP32 score "
         f"{', '.join(f'{scores[i]:.2f}' for i in keep) or 'none'}: {reach})")
    if not keep:
        return calib
    fields = {k: getattr(calib, k) for k in ("gray", "y", "files", "classes", "root", "spec", "origin", "skipped")}
    return AnchoredCalibration(**fields, anchors=np.stack([grays[i] for i in keep]))
