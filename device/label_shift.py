"""Class prevalences at a new site from a model's hard predictions: black-box shift estimation (BBSE).

Why BBSE (Lipton, Wang & Smola, "Detecting and Correcting for Label Shift with
Black Box Predictors", ICML 2018): it needs only the labels the deployed model
outputs, so it works for any file the toolkit runs (an INT8 TFLite model on a Pi
as much as the checkpoint), without its features, gradients, a density model of
images or any retraining. Under label shift (the site's images of each class look
like the training site's, p(x|y) fixed; only the class mix p(y) differs),

    P_site(pred = i) = sum_j P(pred = i, y = j) / p_val(j) * q(j),

so with the joint confusion matrix ``C[i, j] = P(pred = i, y = j)`` measured on the
validation split and the site's predicted-class shares ``mu``, the importance
weights ``w = q / p_val`` solve ``C w = mu``. Negative weights (sampling noise) are
clipped at 0 and ``q = w * p_val`` is renormalised to sum to 1. The estimate is
consistent whenever C is invertible (the model is better than chance on every
class); its error grows as C's smallest singular value shrinks, which the
bootstrap interval shows: it resamples both the validation pairs and the site's
predictions.

When the images themselves change (another scanner, another export pipeline), the
assumption fails and the "prevalence" is no longer one; that is what the OOD-score
shift test and the labelled sensitivity checks of ``edgecxr sitecheck`` catch.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def joint_confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """``C[i, j] = P(pred = i, y = j)`` over the given pairs (K x K, sums to 1)."""
    y, pred = np.asarray(y, dtype=int), np.asarray(pred, dtype=int)
    if len(y) == 0:
        raise ValueError("a confusion matrix needs at least one labelled prediction")
    counts = np.bincount(pred * k + y, minlength=k * k).reshape(k, k)
    return counts / counts.sum()


def prevalence_from(c: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Site prevalences from joint confusion matrices and predicted shares; both may carry a
    leading batch axis (B x K x K, B x K). ``pinv`` gives the exact solution where C is
    invertible and the least-squares one where a resample left it singular."""
    c, mu = np.asarray(c, dtype=np.float64), np.asarray(mu, dtype=np.float64)
    w = np.maximum(np.einsum("...ij,...j->...i", np.linalg.pinv(c), mu), 0.0)
    q = w * c.sum(axis=-2)  # p_val(j): column sums of the joint matrix
    total = q.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, q / np.where(total > 0, total, 1.0), np.nan)


def bbse(y_val: np.ndarray, pred_val: np.ndarray, pred_site: np.ndarray, k: int, n_boot: int = 1000,
         seed: int = 0) -> dict[str, Any]:
    """BBSE prevalences with percentile 95% bootstrap intervals.

    The bootstrap draws the validation confusion counts and the site's predicted-class
    counts from multinomials at their observed frequencies: the same distribution as
    resampling images with replacement, without holding B x n indices in memory.
    """
    pred_site = np.asarray(pred_site, dtype=int)
    if len(pred_site) == 0:
        raise ValueError("BBSE needs at least one site prediction")
    c = joint_confusion(y_val, pred_val, k)
    mu = np.bincount(pred_site, minlength=k) / len(pred_site)
    q = prevalence_from(c, mu)
    out: dict[str, Any] = {"prevalence": q.tolist(), "predicted_share": mu.tolist(),
                           "validation_prevalence": c.sum(axis=0).tolist(), "confusion_joint": c.tolist(),
                           "condition_number": float(np.linalg.cond(c)) if np.all(np.isfinite(c)) else float("inf"),
                           "n_validation": len(y_val), "n_site": len(pred_site), "bootstrap": {"resamples": n_boot, "seed": seed}}
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        c_b = rng.multinomial(len(y_val), c.ravel(), size=n_boot).reshape(n_boot, k, k) / len(y_val)
        mu_b = rng.multinomial(len(pred_site), mu, size=n_boot) / len(pred_site)
        q_b = prevalence_from(c_b, mu_b)
        ok = np.all(np.isfinite(q_b), axis=1)
        lo, hi = np.percentile(q_b[ok], 2.5, axis=0), np.percentile(q_b[ok], 97.5, axis=0)
        out["ci95"] = [[float(a), float(b)] for a, b in zip(lo, hi)]
        mlo, mhi = np.percentile(mu_b, 2.5, axis=0), np.percentile(mu_b, 97.5, axis=0)
        out["predicted_share_ci95"] = [[float(a), float(b)] for a, b in zip(mlo, mhi)]
    return out
