"""Refusing what is not a usable chest X-ray, with numpy alone: the contract's
``decision.quality`` and ``decision.ood`` blocks (see ``decision.py`` for the order).

Quality (before the model, on the decoded uint8 greyscale image): an image too
small to carry detail, a blank or near-constant frame, one whose pixels are
mostly clipped to black or white, or a picture that fills only a small part of a
uniform frame (a radiograph pasted small on a page or a screen) is refused with
its reason. The thresholds are
fixed, generous margins around what real CXRs look like (``edgecxr calibrate``
stores them and reports how many training and validation CXRs each would have
refused), because these checks must never depend on the model.

Out-of-distribution (after the model): a score from what the model outputs,
larger = less like the training chest X-rays, refused above the threshold fitted
at 95% true-positive rate on validation CXRs. Methods (``ood["method"]``):

- ``feature_mahalanobis`` (what ``edgecxr calibrate`` fits): the Mahalanobis
  distance of the model's pooled features to the nearest class, computed inside
  the graph and carried in the logits themselves: the exported head outputs
  centred logits minus the score (softmax does not change), so the score is
  ``-mean(logits)`` here, in every format, from the one output they all have
  (``edgecxr/decide/ood_head.py`` builds that head). Units: 1.0 is the training
  images' 95th percentile;
- ``logit_mahalanobis``: the same distance on the logit vector (per-class means,
  shared covariance, numbers in the block), for a model without that head;
- ``energy`` (``-logsumexp(logits)``), ``max_logit`` (``-max``) and ``msp``
  (``-max softmax``): threshold only.

The logit-only methods let 46-80% of photos through on the README's models where
``feature_mahalanobis`` refused all (docs/results/decision.md "Refusing what is not a chest X-ray"); they stay for comparison.

Schema of ``ood``::

    {"method": "feature_mahalanobis", "threshold": 1.03,
     "tpr": 0.95, "n_fit": 2400, "n_threshold": 300, ...}   # provenance, reports only
    {"method": "logit_mahalanobis", "threshold": 17.0,
     "means": [[...K...], ...K rows],   # per-class means of training logits
     "precision": [[...K...], ...]}      # inverse of the shared covariance (K x K)

Schema of ``quality``: ``{"min_side": 64, "min_std": 4.0, "clip_fraction": 0.9,
"dark_level": 5, "bright_level": 250, "min_content": 0.3}`` (every key optional; defaults below).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .refusal import Refusal

OOD_METHODS = ("feature_mahalanobis", "logit_mahalanobis", "energy", "max_logit", "msp")
QUALITY_DEFAULTS: dict[str, float] = {
    "min_side": 64,  # pixels on the shorter side; the model's input is 224, below 64 nothing is left to upscale
    "min_std": 4.0,  # grey levels; real CXRs here have a standard deviation of 16 or more
    "clip_fraction": 0.9,  # share of pixels at or below dark_level (or at or above bright_level)
    "dark_level": 5,
    "bright_level": 250,
    # share of the frame inside the uniform margins (rows and columns whose pixels vary by at most
    # margin_std grey levels). Measured: 3000 covid-radiography, 300 TB-database normals and 303
    # Shenzhen CXRs all fill at least 0.45 of their frame; the three TB images pasted small on a
    # white page fill 0.15-0.24 (docs/results/decision.md "Refusing what is not a chest X-ray")
    "min_content": 0.3,
    "margin_std": 3.0,
}


class OodSpecError(ValueError):
    """An ``ood`` block that cannot be applied (unknown method, numbers of the wrong shape)."""


def quality_values(spec: dict[str, Any] | None) -> dict[str, float]:
    """The quality thresholds in force: the block's own over the defaults."""
    out = dict(QUALITY_DEFAULTS)
    out.update({k: float(v) for k, v in (spec or {}).items() if k in QUALITY_DEFAULTS})
    return out


def content_fraction(gray: np.ndarray, margin_std: float = QUALITY_DEFAULTS["margin_std"]) -> float:
    """Share of the frame inside its uniform margins: the bounding box of the rows and columns
    whose pixel standard deviation exceeds ``margin_std``. Read on every k-th pixel, k such that
    about 512 rows remain, so a full-size radiograph costs a Pi what a small one does."""
    step = max(1, min(np.shape(gray)) // 512)
    g = np.asarray(gray[::step, ::step], dtype=np.float32)
    rows = np.flatnonzero(g.std(axis=1) > margin_std)
    cols = np.flatnonzero(g.std(axis=0) > margin_std)
    if not len(rows) or not len(cols):
        return 0.0
    return float((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)) / g.size


def quality_problem(gray: np.ndarray, spec: dict[str, Any] | None = None) -> tuple[str, str] | None:
    """``(check, reason)`` for the first failed check, or ``None``: tiny, blank,
    near-constant, saturated (bright), underexposed (dark) or framed, in that order."""
    q = quality_values(spec)
    g = np.asarray(gray)
    if g.ndim != 2:
        return "shape", f"not a single greyscale image (shape {g.shape})"
    h, w = g.shape
    if min(h, w) < q["min_side"]:
        return "tiny", f"too small ({w}x{h} pixels; needs at least {q['min_side']:.0f} on each side)"
    lo, hi = int(g.min()), int(g.max())
    if lo == hi:
        return "blank", f"blank (every pixel is {lo})"
    std = float(g.std(dtype=np.float64))
    if std < q["min_std"]:
        return "near_constant", f"near-constant (pixel standard deviation {std:.2f} < {q['min_std']:g})"
    n = g.size
    bright = float(np.count_nonzero(g >= q["bright_level"])) / n
    if bright > q["clip_fraction"]:
        return "saturated", f"saturated ({bright:.0%} of pixels at {q['bright_level']:.0f} or brighter; limit {q['clip_fraction']:.0%})"
    dark = float(np.count_nonzero(g <= q["dark_level"])) / n
    if dark > q["clip_fraction"]:
        return "underexposed", f"underexposed ({dark:.0%} of pixels at {q['dark_level']:.0f} or darker; limit {q['clip_fraction']:.0%})"
    content = content_fraction(g, q["margin_std"])
    if content == 0.0:  # stripes, a one-way gradient
        return "framed", f"no two-dimensional detail (every row or every column varies by {q['margin_std']:g} grey levels or less)"
    if content < q["min_content"]:
        return "framed", (f"the picture fills only {content:.0%} of a uniform frame (limit {q['min_content']:.0%}): "
                          "crop to the radiograph and send it again")
    return None


def quality_refusal(gray: np.ndarray, spec: dict[str, Any] | None) -> Refusal | None:
    """The decision hook: a refusal with the runner's line, "image rejected: <reason>"."""
    problem = quality_problem(gray, spec)
    if problem is None:
        return None
    return Refusal("quality", f"image rejected: {problem[1]}")


# --- out-of-distribution score ------------------------------------------------------------
def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def mahalanobis_min(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """min over classes of (x - mu_c)^T P (x - mu_c), for every row of ``x`` (N x D)."""
    d = x[:, None, :] - means[None, :, :]  # N x C x D
    return np.einsum("ncd,de,nce->nc", d, precision, d).min(axis=1)


def ood_scores(logits: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Scores of a batch of logits (N x K), float64; larger = less like a training CXR."""
    z = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    method = spec.get("method")
    if method == "feature_mahalanobis":  # the graph subtracted the score from centred logits
        return -z.mean(axis=1)
    if method == "logit_mahalanobis":
        try:
            means = np.asarray(spec["means"], dtype=np.float64)
            precision = np.asarray(spec["precision"], dtype=np.float64)
        except KeyError as exc:
            raise OodSpecError(f"ood block for {method} lacks {exc}") from exc
        k = z.shape[1]
        if means.ndim != 2 or means.shape[1] != k or precision.shape != (k, k):
            raise OodSpecError(f"ood block's means {means.shape} / precision {precision.shape} do not fit {k} logits")
        return mahalanobis_min(z, means, precision)
    if method == "energy":
        return -_logsumexp(z)
    if method == "max_logit":
        return -z.max(axis=1)
    if method == "msp":
        return -np.exp(z.max(axis=1) - _logsumexp(z))
    raise OodSpecError(f"ood method {method!r} is not one of {', '.join(OOD_METHODS)}; was the model made by a newer edgecxr?")


def ood_threshold(spec: dict[str, Any]) -> float:
    try:
        t = float(spec["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise OodSpecError("ood block has no numeric threshold") from exc
    if not np.isfinite(t):
        raise OodSpecError(f"ood threshold must be finite, got {t}")
    return t


def unfamiliar_flag(logits: np.ndarray, spec: dict[str, Any]) -> Refusal | None:
    """The decision hook for ``decision.unfamiliar``: "unfamiliar image (score S > T): refer", or ``None``.
    Same scores as the refusal (:func:`ood_scores`), its own method and threshold."""
    score = float(ood_scores(np.asarray(logits).reshape(1, -1), spec)[0])
    threshold = ood_threshold(spec)
    if score <= threshold:
        return None
    return Refusal("unfamiliar", f"unfamiliar image (score {score:.3g} > {threshold:.3g}): refer", score, threshold)


def ood_refusal(logits: np.ndarray, features: np.ndarray | None, spec: dict[str, Any]) -> Refusal | None:
    """The decision hook: "not a chest X-ray (score S > T): no prediction", or ``None``.
    ``features`` is unused: every method here works on the logits alone (see module docstring)."""
    score = float(ood_scores(np.asarray(logits).reshape(1, -1), spec)[0])
    threshold = ood_threshold(spec)
    if score <= threshold:
        return None
    return Refusal("ood", f"not a chest X-ray (score {score:.3g} > {threshold:.3g}): no prediction", score, threshold)
