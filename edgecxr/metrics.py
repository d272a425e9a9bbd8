"""Classification metrics with 95% bootstrap confidence intervals.

scikit-learn computes every point estimate; the bootstrap resamples images (with a
fixed seed) and recomputes the same functions, so each CI belongs to exactly the
number printed beside it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score


def _auc_per_class(y: np.ndarray, probs: np.ndarray, k: int) -> list[float]:
    out = []
    for c in range(k):
        pos = y == c
        out.append(float(roc_auc_score(pos, probs[:, c])) if 0 < pos.sum() < len(y) else float("nan"))
    return out


def _sens_spec(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(float)
    fn = cm.sum(axis=1) - tp
    fp = cm.sum(axis=0) - tp
    tn = cm.sum() - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / (tp + fn), tn / (tn + fp)


def point_metrics(y: np.ndarray, probs: np.ndarray, k: int) -> dict[str, Any]:
    pred = probs.argmax(axis=1)
    labels = list(range(k))
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y, pred, labels=labels)
    sens, spec = _sens_spec(cm)
    aucs = _auc_per_class(y, probs, k)
    finite = [a for a in aucs if not np.isnan(a)]
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "auc_macro": float(np.mean(finite)) if finite else float("nan"),
        "precision": prec.tolist(), "recall": rec.tolist(), "f1": f1.tolist(), "support": support.tolist(),
        "sensitivity": sens.tolist(), "specificity": spec.tolist(), "auc": aucs,
        "confusion_matrix": cm.tolist(),
    }


def bootstrap_ci(y: np.ndarray, probs: np.ndarray, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], n_boot: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile 95% CI of a vector-valued metric ``fn(y, probs)``."""
    rng = np.random.default_rng(seed)
    vals = []
    n = len(y)
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        vals.append(np.asarray(fn(y[idx], probs[idx]), dtype=float))
    arr = np.stack(vals)
    with np.errstate(invalid="ignore"):
        return np.nanpercentile(arr, 2.5, axis=0), np.nanpercentile(arr, 97.5, axis=0)


def _vector(k: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def fn(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
        m = point_metrics(y, probs, k)
        return np.array([m["accuracy"], m["macro_f1"], m["auc_macro"], *m["precision"], *m["recall"], *m["f1"],
                         *m["sensitivity"], *m["specificity"], *m["auc"]])

    return fn


def classification_report(y: np.ndarray, probs: np.ndarray, classes: list[str], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The ``eval.json`` body: metrics, per-class metrics and their 95% CIs."""
    k = len(classes)
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    m = point_metrics(y, probs, k)
    lo, hi = bootstrap_ci(y, probs, _vector(k), n_boot, seed) if n_boot > 0 else (np.full(3 + 6 * k, np.nan),) * 2

    def ci(i: int) -> list[float]:
        return [float(lo[i]), float(hi[i])]

    per_class = {}
    for c, name in enumerate(classes):
        per_class[name] = {
            "support": int(m["support"][c]),
            **{key: {"value": float(m[key][c]), "ci95": ci(3 + j * k + c)}
               for j, key in enumerate(["precision", "recall", "f1", "sensitivity", "specificity", "auc"])},
        }
    return {
        "n_images": len(y),
        "classes": list(classes),
        "accuracy": m["accuracy"], "accuracy_ci95": ci(0),
        "macro_f1": m["macro_f1"], "macro_f1_ci95": ci(1),
        "auc_macro": m["auc_macro"], "auc_macro_ci95": ci(2),
        "per_class": per_class,
        "confusion_matrix": m["confusion_matrix"],
        "bootstrap": {"resamples": n_boot, "seed": seed},
    }


def paired_delta_ci(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, k: int, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Macro-F1 of b minus a in percentage points, CI from the same resampled images.

    Pairing matters: two models evaluated on the same images share most of their
    sampling noise, so the CI of the difference is far tighter than two separate CIs.
    """
    def f1(y_: np.ndarray, p: np.ndarray) -> float:
        return float(f1_score(y_, p.argmax(1), labels=list(range(k)), average="macro", zero_division=0))

    y = np.asarray(y, dtype=int)
    stacked = np.concatenate([probs_a, probs_b], axis=1)
    lo, hi = bootstrap_ci(y, stacked, lambda yy, pp: np.array([f1(yy, pp[:, k:]) - f1(yy, pp[:, :k])]) * 100, n_boot, seed)
    return {"delta_pp": (f1(y, probs_b) - f1(y, probs_a)) * 100, "ci95": [float(lo[0]), float(hi[0])],
            "top1_agreement": float((probs_a.argmax(1) == probs_b.argmax(1)).mean())}
