"""Choose the golden images and stamp them, with expected outputs, into each artifact.

The images are real verification images, stored as 8-bit grayscale at the model's
input size (about 35 KB each at 224 px), so the device's self-test runs its own
equalisation, denoising and normalisation on them, not a pre-made tensor. Not
smaller: enlarging them on the device would run a resize whose OpenCV and numpy
versions differ (by up to 0.26 in the input tensor, 0.1 in probability, measured),
where at the input size both preprocessing paths are bit-identical. They are picked,
as stored, where a wrong kernel shows: images the FP32 model gets right with a
clear but unsaturated top-1 probability (near 0.9), since a probability of 0.9999
hardly moves when the logits do, and one near 0.5 flips under honest rounding.
``device/selftest.py`` runs them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgecxr.device.selftest import golden_block

GOLDEN_IMAGES = 8
GOLDEN_MAX_SIDE = 320  # bounds the contract for large-input backbones
_TARGET_P = 0.9


@dataclass
class Golden:
    grays: list[np.ndarray]
    labels: list[str]
    files: list[str]
    fp32_probs: np.ndarray


def choose_indices(ref_probs: np.ndarray, y: np.ndarray, n: int = GOLDEN_IMAGES) -> list[int]:
    """Round-robin over classes; in each, correct images nearest p=0.9 first, then the rest."""
    top, pred = ref_probs.max(1), ref_probs.argmax(1)
    per_class: list[list[int]] = []
    for c in sorted(set(int(v) for v in y)):
        idx = np.flatnonzero(y == c)
        good = [int(i) for i in idx if pred[i] == c and top[i] >= 0.6]
        good.sort(key=lambda i: (abs(top[i] - _TARGET_P), i))
        rest = [int(i) for i in idx if int(i) not in set(good)]
        per_class.append(good + rest)
    chosen: list[int] = []
    while len(chosen) < n and any(per_class):
        for queue in per_class:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return chosen


def build(vset: Any, torch_model: Any, spec: Any, n: int = GOLDEN_IMAGES) -> Golden | None:
    """The golden images of one conversion (shared by all its artifacts), with PyTorch FP32 outputs.

    Every verification image is reduced to the stored size first and judged as stored,
    so the chosen ones are confident in the form the device will see.
    """
    import os

    from edgecxr.device.image_io import ImageError, load_gray
    from edgecxr.device.preprocess import resize_gray

    if vset is None or not vset.files:
        return None
    side = min(int(spec.size), GOLDEN_MAX_SIDE)
    grays, keep = [], []
    for i, f in enumerate(vset.files):
        try:
            grays.append(np.ascontiguousarray(resize_gray(load_gray(os.path.join(vset.root, f)), side)))
            keep.append(i)
        except ImageError:
            continue
    if not grays:
        return None
    probs = _torch_probs(torch_model, grays, spec)
    y = np.asarray(vset.y)[keep]
    chosen = choose_indices(probs, y, n)
    return Golden([grays[i] for i in chosen], [vset.classes[int(y[i])] for i in chosen],
                  [vset.files[keep[i]] for i in chosen], probs[chosen])


def _torch_probs(torch_model: Any, grays: list[np.ndarray], spec: Any) -> np.ndarray:
    from edgecxr.convert.reference import torch_logits
    from edgecxr.device.decision import softmax
    from edgecxr.device.preprocess import preprocess

    return softmax(torch_logits(torch_model, np.stack([preprocess(g, spec) for g in grays])).astype(np.float64))


def with_golden(contract: Any, golden: Golden, host_probs: np.ndarray | None, host_cpu: dict[str, Any]) -> Any:
    """``contract`` with the golden vectors the device's self-test checks (written with the
    rest of the contract, once)."""
    block = golden_block(golden.grays, golden.labels, golden.fp32_probs, host_probs, host_cpu)
    block["files"] = golden.files
    return replace(contract, selftest=block)
