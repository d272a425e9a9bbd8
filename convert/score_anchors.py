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
    anchor_names: list[str] = field(default_factory=list)

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


def carried_score(torch_model: Any, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """The head's score as the device reads it: minus the mean of the logits."""
    import torch

    with torch.inference_mode():
        z = np.concatenate([torch_model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch], dtype=np.float32))).numpy()
                            for i in range(0, len(x), batch)])
    return -z.mean(axis=1)


def with_score_anchors(calib: LabelledImages, torch_model: Any, echo: Callable[[str], None]) -> LabelledImages:
    """``calib`` with the drawn patterns whose FP32 score reaches the head's cap (or, failing
    that, exceeds every calibration image's); unchanged for a model without the head."""
    from edgecxr.decide.ood_head import OodHead

    head = getattr(torch_model, "head", None)
    if not isinstance(head, OodHead):
        return calib
    names, grays = zip(*((k, prepare_gray(g, calib.spec)) for k, g in drawn_patterns().items()))
    scores = carried_score(torch_model, np.stack([normalize(g, calib.spec) for g in grays]))
    top = float(carried_score(torch_model, calib.x).max())
    cap = head.cap
    keep = [i for i, s in enumerate(scores) if s >= cap - 1e-3] or [i for i, s in enumerate(scores) if s > top]
    echo(f"calibration: {len(keep)} drawn OOD-score range anchors (FP32 score "
         f"{', '.join(f'{scores[i]:.2f}' for i in keep) or 'none above the images'}; the calibration images reach {top:.2f}, "
         f"the head clips at {cap:g})")
    if not keep:
        return calib
    fields = {k: getattr(calib, k) for k in ("gray", "y", "files", "classes", "root", "spec", "origin", "skipped")}
    return AnchoredCalibration(**fields, anchors=np.stack([grays[i] for i in keep]), anchor_names=[names[i] for i in keep])
