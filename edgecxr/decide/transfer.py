"""A rounded file's temperature and conformal thresholds, carried over from its checkpoint.

An INT8 file is its checkpoint's model plus rounding. Refitting its temperature and conformal
threshold from scratch on its 300 validation outputs draws two noisy statistics again: the
temperature's likelihood turns on the few misclassified images, and ``qhat`` is a far-tail
quantile of a sparse score (most images sit at ~0, a handful spread over the rest), so it jumps
with the one or two images next to it. Measured on the README MobileNetV2 (docs/results/decision.md
"One model, three files"): four validation images crossing the checkpoint's threshold moved the
INT8 TFLite file's ``qhat`` from 0.113 to 0.204, and the file then answered 63.4% of another
hospital's normals where the float model answered 49.5%.

What rounding does to the probabilities is measured far more precisely in pairs, the same
validation images through both models: it scales the centred logits (least squares through the
origin over every validation logit), so the file's T is the checkpoint's times that scale, its
calibrated probabilities are the checkpoint's, and the checkpoint's conformal thresholds (qhat,
per class too) mean the same in them and are kept.

The two OOD cuts are not carried over: they are quantiles of a dense score (many validation
images lie near the 95% point), steady when refitted, and a refit keeps the checkpoint's share
of each reason where a paired line would not (rounding noise spreads the file's scores, so more
images cross a carried cut: 8% of the QAT EfficientNet-Lite0's validation images against 5%).

Only sound for a file that is its checkpoint plus rounding: one whose top-1 answer differs from
the checkpoint's on more than 5% of the validation images (convert's own tolerance) gets the
fresh refit of ``ood_fit.refit_decision`` instead.
"""
from __future__ import annotations

from typing import Any

import numpy as np

MIN_AGREEMENT = 0.95  # convert's tolerance (verify.py): below it the file is another model, refitted afresh


def logit_scale(z_ref: np.ndarray, z_own: np.ndarray) -> float:
    """The factor the file's centred logits are of the checkpoint's. The logits' mean carries the
    OOD score (``ood_head``), so it is removed first; softmax never sees it."""
    a = np.asarray(z_ref, dtype=np.float64)
    b = np.asarray(z_own, dtype=np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = float((a * a).sum())
    return float((a * b).sum() / denom) if denom > 0 else 1.0


def transfer_decision(block: dict[str, Any], z_ref: np.ndarray, z_own: np.ndarray, fitted_with: str
                      ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The checkpoint's ``block`` with its temperature carried over to the file whose validation
    logits are ``z_own`` (``z_ref``: the checkpoint's, same images, same order), and the numbers
    behind it; None when the file disagrees with the checkpoint too often for that to hold, or the
    block has no temperature."""
    z_ref = np.asarray(z_ref, dtype=np.float64)
    z_own = np.asarray(z_own, dtype=np.float64)
    if "temperature" not in block or len(z_ref) == 0 or z_ref.shape != z_own.shape:
        return None
    agreement = float(np.mean(z_ref.argmax(1) == z_own.argmax(1)))
    scale = logit_scale(z_ref, z_own)
    if agreement < MIN_AGREEMENT or scale <= 0:
        return None
    how = f"carried over from the checkpoint by a paired estimate on {len(z_ref)} validation images ({fitted_with})"
    new = dict(block)
    new["temperature"] = float(block["temperature"]) * scale
    new["calibration"] = {**(block.get("calibration") or {}), "logit_scale": scale, "transferred": how}
    new["conformal"] = {**(block.get("conformal") or {}), "transferred": how}
    return new, {"transferred": how, "agreement": agreement, "logit_scale": scale,
                 "temperature_from_checkpoint": float(block["temperature"]), "temperature": new["temperature"]}
