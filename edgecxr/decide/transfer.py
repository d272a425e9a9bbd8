"""A rounded file's decision numbers, carried over from its checkpoint by paired estimates.

An INT8 file is its checkpoint's model plus rounding. Refitting its temperature, conformal
threshold and unfamiliar cut from scratch on its 300 validation outputs draws three noisy
statistics again: a tail quantile moves with the few images near it, and the temperature's
likelihood with the few misclassified ones. Measured on the README MobileNetV2
(docs/results/decision.md "One model, three files"): the INT8 TFLite file's own qhat came out
0.204 against the checkpoint's 0.113 (four validation images crossed it), so the file answered
63.4% of another hospital's normals where the float model answered 49.5%.

What rounding changes is measured far more precisely in pairs, the same validation images
through both models:

- **temperature**: rounding scales the centred logits (least squares through the origin over
  every validation logit); the file's T is the checkpoint's times that scale, so its
  calibrated probabilities are the checkpoint's and the checkpoint's conformal thresholds
  (qhat, per class too) mean the same in them and are kept;
- **unfamiliar cut**: quantisation noise inflates a feature distance, more for a small
  distance than a large one, so the shift is read where the cut is: a Theil-Sen line of the
  file's score on the checkpoint's over the half of the validation images with the higher
  scores, evaluated at the checkpoint's cut;
- **not-a-CXR cut**: the checkpoint's, times the same scale, and never below the file's own
  largest validation score (``ood_cuts.carried_over_cut``).

This is only sound for a file that is its checkpoint plus rounding: one whose top-1 answer
differs from the checkpoint's on more than 5% of the validation images (convert's own
tolerance) gets the fresh refit of ``ood_fit.refit_decision`` instead.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgecxr.device.ood import ood_scores

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


def paired_threshold(ref: np.ndarray, own: np.ndarray, threshold: float) -> float:
    """Where the checkpoint's ``threshold`` lands on the file's score: a Theil-Sen line of the
    file's scores on the checkpoint's, fitted on the upper half of the checkpoint's scores."""
    from scipy.stats import theilslopes

    r = np.asarray(ref, dtype=np.float64)
    o = np.asarray(own, dtype=np.float64)
    upper = r >= np.median(r)
    if upper.sum() < 3 or np.ptp(r[upper]) <= 0:
        return float(threshold)
    slope, intercept = theilslopes(o[upper], r[upper])[:2]
    return float(intercept + slope * float(threshold))


def transfer_decision(block: dict[str, Any], z_ref: np.ndarray, z_own: np.ndarray, fitted_with: str
                      ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The checkpoint's ``block`` carried over to the file whose validation logits are ``z_own``
    (``z_ref``: the checkpoint's, same images, same order), with the numbers behind it; None when
    the file disagrees with the checkpoint too often for a carried-over number to hold."""
    from edgecxr.decide.ood_cuts import carried_over_cut

    z_ref = np.asarray(z_ref, dtype=np.float64)
    z_own = np.asarray(z_own, dtype=np.float64)
    agreement = float(np.mean(z_ref.argmax(1) == z_own.argmax(1))) if len(z_ref) else 0.0
    ood, unfamiliar = block.get("ood"), block.get("unfamiliar")
    one_cut = bool(ood) and not (unfamiliar and "margin" in ood)  # an older model's single cut: refitted afresh
    if len(z_ref) == 0 or z_ref.shape != z_own.shape or agreement < MIN_AGREEMENT or one_cut:
        return None
    new = dict(block)
    how = f"carried over from the checkpoint by paired estimates on {len(z_ref)} validation images ({fitted_with})"
    out: dict[str, Any] = {"transferred": how, "agreement": agreement}
    if "temperature" in block:
        scale = logit_scale(z_ref, z_own)
        if scale <= 0:
            return None
        new["temperature"] = float(block["temperature"]) * scale
        new["calibration"] = {**(block.get("calibration") or {}), "logit_scale": scale, "transferred": how}
        new["conformal"] = {**(block.get("conformal") or {}), "transferred": how}
        out.update({"temperature_from_checkpoint": float(block["temperature"]), "temperature": new["temperature"],
                    "logit_scale": scale})
    if ood and unfamiliar:
        own_scores = ood_scores(z_own, {**ood, "threshold": 0.0})
        ref_scores = ood_scores(z_ref, {**ood, "threshold": 0.0})
        cut = paired_threshold(ref_scores, own_scores, float(unfamiliar["threshold"]))
        ratio = cut / float(unfamiliar["threshold"]) if float(unfamiliar["threshold"]) > 0 else 1.0
        own_max = float(own_scores.max())
        own_ood = {**ood, "threshold": _own_not_cxr_cut(own_scores, ood), "val_max": own_max,
                   "rule": f"{float(ood['margin']):g} x the largest of {len(own_scores)} validation scores"}
        new["ood"] = {**carried_over_cut(own_ood, float(ood["threshold"]), ratio), "fitted_with": fitted_with}
        new["ood"]["val_refused"] = float(np.mean(own_scores > new["ood"]["threshold"]))
        new["unfamiliar"] = {**unfamiliar, "threshold": cut, "fitted_with": fitted_with, "transferred": how,
                             "val_referred": float(np.mean(own_scores > cut))}
        out.update({"ood_threshold_from_checkpoint": float(ood["threshold"]), "ood_threshold": new["ood"]["threshold"],
                    "unfamiliar_threshold_from_checkpoint": float(unfamiliar["threshold"]), "unfamiliar_threshold": cut,
                    "unfamiliar_val_referred": new["unfamiliar"]["val_referred"],
                    "ood_val_refused": new["ood"]["val_refused"]})
    return new, out


def _own_not_cxr_cut(scores: np.ndarray, ood: dict[str, Any]) -> float:
    from edgecxr.decide.ood_cuts import not_cxr_cut

    return not_cxr_cut(scores, float(ood["margin"]), ood.get("cap"))
