"""Choose the golden images and stamp them, with expected outputs, into each artifact.

The images are real verification images, stored at most 128 px square as 8-bit
grayscale (about 13 KB each), so the device's self-test runs its own resize,
equalisation and normalisation on them, not a pre-made tensor. They are picked
where a wrong kernel shows: images the FP32 model gets right with a clear but
unsaturated top-1 probability (near 0.85), since a probability of 0.9999 hardly
moves when the logits do. ``device/selftest.py`` runs them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgecxr.device.selftest import golden_block, probabilities

GOLDEN_IMAGES = 8
GOLDEN_MAX_SIDE = 128
_TARGET_P = 0.85


@dataclass
class Golden:
    grays: list[np.ndarray]
    labels: list[str]
    files: list[str]
    fp32_probs: np.ndarray


def choose_indices(ref_probs: np.ndarray, y: np.ndarray, n: int = GOLDEN_IMAGES) -> list[int]:
    """Round-robin over classes; in each, correct images nearest p=0.85 first, then the rest."""
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


def build(vset: Any, ref_logits: np.ndarray, torch_model: Any, spec: Any, n: int = GOLDEN_IMAGES) -> Golden | None:
    """The golden images of one conversion (shared by all its artifacts), with PyTorch FP32 outputs."""
    import os

    import torch

    from edgecxr.device.backends import softmax
    from edgecxr.device.image_io import ImageError, load_gray
    from edgecxr.device.preprocess import preprocess, resize_gray

    if vset is None or not vset.files:
        return None
    side = min(int(spec.size), GOLDEN_MAX_SIDE)
    grays, labels, files = [], [], []
    for i in choose_indices(softmax(ref_logits.astype(np.float64)), np.asarray(vset.y), n):
        try:
            gray = load_gray(os.path.join(vset.root, vset.files[i]))
        except ImageError:
            continue
        grays.append(np.ascontiguousarray(resize_gray(gray, side)))
        labels.append(vset.classes[int(vset.y[i])])
        files.append(vset.files[i])
    if not grays:
        return None
    x = torch.from_numpy(np.stack([preprocess(g, spec) for g in grays]))
    torch_model.eval()
    with torch.inference_mode():
        p = softmax(torch_model(x).numpy().astype(np.float64))
    return Golden(grays, labels, files, p)


def host_probabilities(path: str, golden: Golden, threads: int | None) -> np.ndarray:
    """The artifact's own outputs on the golden images, on this machine, through the device path."""
    from edgecxr.runtime import open_model

    return probabilities(open_model(path, threads, check_cpu=False), golden.grays)


def stamp(path: str, golden: Golden, host_probs: np.ndarray | None, host_cpu: dict[str, Any]) -> int:
    """Rewrite the artifact's contract with its golden vectors; returns the bytes they add."""
    from edgecxr.device.backends import open_backend

    contract = open_backend(path, check_cpu=False).contract
    block = golden_block(golden.grays, golden.labels, golden.fp32_probs, host_probs, host_cpu)
    block["files"] = golden.files
    updated = replace(contract, selftest=block)
    write_contract(path, updated)
    return len(updated.to_json()) - len(contract.to_json())


def write_contract(path: str, contract: Any) -> None:
    """Replace a converted file's contract where its format keeps it (atomically)."""
    from edgecxr.atomic import write_text
    from edgecxr.convert.formats import format_for_path
    from edgecxr.device.contract import sidecar_path

    fmt = format_for_path(path)
    if fmt is not None and fmt.name == "onnx":
        from edgecxr.convert.quantize import restamp

        restamp(path, contract, path)
    else:
        write_text(sidecar_path(path), contract.to_json() + "\n")
