"""Two cuts on one model's out-of-distribution scores: "not a chest X-ray" (refuse) and
"unfamiliar image" (refer).

One cut at 95% of the validation CXRs answered two different questions at once: it
told one real radiograph in twenty that it was not a radiograph. The questions get
their own cuts, both fitted on the validation CXRs only (never test images):

- **not a chest X-ray** (``decision.ood``, refused): ``margin`` (default 1) times the
  largest validation score. On exchangeable data a new CXR lies above the largest of n
  validation scores with probability at most 1 / (n + 1), so (almost) no real radiograph
  is refused; a wider margin refuses fewer non-CXR images, not fewer CXRs (measured in
  docs/results/decision.md "Two questions": at 2x, 94% of photos fell short of the cut);
- **unfamiliar** (``decision.unfamiliar``, referred with its score): the split-conformal
  quantile at ``tpr`` of the validation scores, the old single cut: a fresh CXR like the
  validated ones passes with probability at least ``tpr``; one that does not is a
  radiograph for a radiologist, not a refusal. A non-CXR image that falls short of the
  first cut lands here: referred, never answered.

Both come from the same score (the feature-space Mahalanobis distance the exported head
carries in every format's logits, ``edgecxr/decide/ood_head.py``), so every format computes
both with numpy alone; the measurements behind that choice, against logit-space,
relative-Mahalanobis and nearest-neighbour scores, are in docs/results/decision.md.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgecxr.device.ood import ood_scores
from edgecxr.errors import EdgecxrError

DEFAULT_TPR = 0.95
NOT_CXR_MARGIN = 1.0  # measured: docs/results/decision.md "Two questions" (2.0 let 94% of photos through to "unfamiliar")
NOT_CXR_EXAMPLES = 600  # drawn non-CXR images the head's discriminator learns from (negatives.py; docs/results/decision.md)
NUMBERS = ("means", "precision")  # a logit-space method's own numbers, carried by both blocks


def threshold_at_tpr(scores: np.ndarray, tpr: float = DEFAULT_TPR) -> float:
    """The ``ceil((n + 1) * tpr)``-th smallest score (the largest where n is too small)."""
    if not 0.0 < tpr < 1.0:
        raise EdgecxrError(f"--ood-tpr must be between 0 and 1 (e.g. 0.95), got {tpr}")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if len(s) == 0:
        raise EdgecxrError("the OOD threshold needs at least one validation image")
    return float(s[min(len(s), math.ceil((len(s) + 1) * tpr)) - 1])


def not_cxr_cut(val_scores: np.ndarray, margin: float = NOT_CXR_MARGIN, cap: float | None = None) -> float:
    """``margin`` x the largest validation score; refused when above. A head that clips its score at
    ``cap`` must leave room above the cut, or nothing could ever be refused: where ``margin`` would
    reach it, the cut goes halfway between the largest validation score and the clip instead."""
    if margin < 1.0:
        raise EdgecxrError(f"the not-a-chest-X-ray margin must be at least 1 (got {margin}): below it real CXRs of the "
                           "validation split itself would be refused")
    s = np.asarray(val_scores, dtype=np.float64)
    if len(s) == 0:
        raise EdgecxrError("the not-a-chest-X-ray cut needs at least one validation image")
    top = max(float(s.max()), 0.0)
    cut = float(margin * top)
    if cap is not None and cut >= cap:
        if top >= cap:
            raise EdgecxrError(f"validation CXRs reach the OOD head's clip ({cap:g}): the head cannot tell them from anything "
                               "else; train longer or refit the head (edgecxr calibrate) on more training images")
        cut = (top + float(cap)) / 2.0
    return cut


def carried_over_cut(own: dict[str, Any], checkpoint_cut: float, scale: float) -> dict[str, Any]:
    """A rounded file's not-a-CXR cut: its own (``margin`` x its largest validation score) or the
    checkpoint's cut times the file's score scale, whichever is higher, and below the clip.

    ``scale`` is the file's unfamiliar cut over the checkpoint's: both are 95% quantiles of the same
    validation images, far steadier than a maximum. Measured on the README MobileNetV2 with
    drawn anchors (docs/results/decision.md): INT8 moved the 95% quantile up 5% while the largest of
    300 validation scores fell 8% (1.61 -> 1.48), and at that lower cut the INT8 TFLite file
    refused 3.3% of the TB CXRs and 90% of the photos where FP32 refused 1.3% and 74%."""
    carried = float(checkpoint_cut) * float(scale)
    cap = own.get("cap")
    if cap is not None:
        carried = min(carried, (float(own["val_max"]) + float(cap)) / 2.0)
    if carried <= float(own["threshold"]):
        return own
    return {**own, "threshold": carried, "val_refused": 0.0,  # at least the file's own cut: no validation CXR above it
            "rule": f"{own['rule']} or the checkpoint's cut {checkpoint_cut:.4f} x this file's score scale {scale:.4f} "
                    "(unfamiliar cut over the checkpoint's), whichever is higher"}


def fit_cuts(spec: dict[str, Any], val_logits: np.ndarray, tpr: float = DEFAULT_TPR,
             margin: float = NOT_CXR_MARGIN) -> dict[str, dict[str, Any]]:
    """``{"ood": ..., "unfamiliar": ...}`` for the score ``spec`` names (its method and numbers),
    both thresholded on ``val_logits`` (the validation outputs of the file the device runs)."""
    scores = ood_scores(val_logits, {**spec, "threshold": 0.0})
    base = {k: v for k, v in spec.items() if k in ("method", "cap", "scale", "dims", "features", "not_cxr", *NUMBERS)}
    refer_at = threshold_at_tpr(scores, tpr)
    refuse_at = not_cxr_cut(scores, margin, spec.get("cap"))
    n = int(len(scores))
    ood = {**base, "threshold": refuse_at, "rule": f"{margin:g} x the largest of {n} validation scores", "margin": float(margin),
           "val_max": float(scores.max()), "n_threshold": n, "val_refused": float(np.mean(scores > refuse_at))}
    unfamiliar = {**base, "threshold": refer_at, "tpr": float(tpr), "n_threshold": n,
                  "val_referred": float(np.mean(scores > refer_at))}
    return {"ood": ood, "unfamiliar": unfamiliar}


def describe_cuts(blocks: dict[str, Any]) -> list[str]:
    """The lines calibrate and convert print about the two cuts."""
    out = []
    o, u = blocks.get("ood"), blocks.get("unfamiliar")
    if o and "margin" in o:
        out.append(f"not a chest X-ray ({o['method']}): refused above {o['threshold']:.4f} = {o['rule']} "
                   f"(largest {o['val_max']:.4f})")
    if u:
        out.append(f"unfamiliar image: referred above {u['threshold']:.4f}, keeps {u['tpr']:.0%} of {u['n_threshold']} validation "
                   f"CXRs ({u['val_referred']:.1%} of them referred)")
    return out
