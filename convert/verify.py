"""Prove each artifact still computes the checkpoint's model.

Every artifact is opened through ``edgecxr.models.runtime.open_model`` (the code path of
``edgecxr eval``, bench and, for ONNX/TFLite, the Pi runner), run on the same
preprocessed verification images as the PyTorch model, and compared with it:
logit differences, top-1 agreement, and accuracy / macro-F1 with the macro-F1
change in percentage points (paired bootstrap CI, since both models see the same
images). Going through ``open_model`` also proves the embedded contract or sidecar
is readable and matches the tensors.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgecxr.convert.reference import BATCH
from edgecxr.convert.reference import torch_logits as torch_logits  # callers compare against it here
from edgecxr.data.imageset import LabelledImages
from edgecxr.decide.report import ece_change
from edgecxr.device.contract import Contract
from edgecxr.device.decision import softmax
from edgecxr.errors import EdgecxrError
from edgecxr.eval.tolerance import MAX_DROP_PP, MIN_AGREEMENT

DELTA_BOOTSTRAP = 1000
MIN_FLIPS = 2


def load_verify_set(contract: Contract, verify_data: str | None, progress: bool = True) -> LabelledImages | None:
    """``--verify-data DIR`` (every image in it), else the run's test split; ``None`` when neither exists."""
    import os

    from edgecxr.data.imageset import load_images
    from edgecxr.eval.evaluate import resolve_samples

    if verify_data:
        index = resolve_samples(contract, verify_data, "all")
        samples, origin = index.of_split("all"), f"--verify-data {verify_data}"
    else:
        split_csv, root = contract.source.get("split_csv"), contract.source.get("data_root")
        if not split_csv or not root or not os.path.exists(split_csv) or not os.path.isdir(root):
            return None
        index = resolve_samples(contract, None, "test")
        samples, origin = index.of_split("test"), f"the test split of {split_csv}"
        if not samples:
            return None
    return load_images(index, samples, contract.preprocess, origin, progress=progress)


def backend_logits(backend: Any, x: np.ndarray) -> np.ndarray:
    out = [backend.predict(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    return np.concatenate(out).astype(np.float32)


def compare(ref_logits: np.ndarray, logits: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """The numbers the report shows for one artifact against the PyTorch reference."""
    from edgecxr.eval.metrics import compare_to_reference, point_metrics

    if logits.shape != ref_logits.shape:
        raise EdgecxrError(f"artifact returns logits of shape {logits.shape}, the checkpoint {ref_logits.shape}")
    k = len(classes)
    y = np.asarray(y, dtype=int)
    p_ref, p = softmax(ref_logits.astype(np.float64)), softmax(logits.astype(np.float64))
    m = point_metrics(y, p, k)
    diff = np.abs(logits - ref_logits)
    return {
        "images": int(len(y)),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "max_abs_prob_diff": float(np.abs(p - p_ref).max()),
        "accuracy": float(m["accuracy"]),
        "macro_f1": float(m["macro_f1"]),
        **compare_to_reference(y, p_ref, p, k, n_boot=DELTA_BOOTSTRAP),
    }


def degradation(v: dict[str, Any], min_agreement: float = MIN_AGREEMENT, max_drop_pp: float = MAX_DROP_PP) -> str | None:
    """Why a verified artifact is not faithful to its checkpoint, or ``None`` when it is."""
    flips = round((1.0 - v["top1_agreement"]) * v["images"])
    if flips < MIN_FLIPS:
        return None
    why = []
    if v["top1_agreement"] < min_agreement:
        why.append(f"top-1 agreement {100 * v['top1_agreement']:.1f}% < {100 * min_agreement:g}%")
    if v["delta_macro_f1_pp"] < -max_drop_pp:
        why.append(f"macro-F1 {v['delta_macro_f1_pp']:+.2f} pp beyond -{max_drop_pp:g}")
    return "DEGRADED: " + ", ".join(why) if why else None


def reference_metrics(ref_logits: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, Any]:
    from edgecxr.eval.metrics import point_metrics

    m = point_metrics(y, softmax(ref_logits.astype(np.float64)), len(classes))
    return {"images": int(len(y)), "accuracy": float(m["accuracy"]), "macro_f1": float(m["macro_f1"])}


def verify_artifact(backend: Any, vset: LabelledImages, ref_logits: np.ndarray) -> dict[str, Any]:
    """The file open in ``backend`` (opened even where its contract says this CPU computes it
    wrong: that is measured here) against the PyTorch reference, with the contract it will carry."""
    t0 = time.perf_counter()
    logits = backend_logits(backend, vset.x)
    out = compare(ref_logits, logits, vset.y, vset.classes)
    out["calibration"] = ece_change(ref_logits, logits, vset.y, backend.contract.decision)  # INT8/FP16 ECE vs FP32
    out["runtime"] = backend.runtime
    out["seconds"] = time.perf_counter() - t0
    return out
