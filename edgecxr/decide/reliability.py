"""Calibration metrics: does a probability of 0.9 mean right 9 times in 10?

Expected calibration error (15 equal-width bins, and "adaptive": 15 equal-mass
bins, which does not leave most bins empty for a model whose confidences pile up
near 1), Brier score and negative log-likelihood, each with a percentile 95%
bootstrap CI from the same resampled images as ``metrics.bootstrap_ci`` (same
seed, same resampling), vectorised over all resamples.

Written in numpy rather than taken from ``netcal``: the definitions are a few lines
each (and are pinned by tests against a hand computation), while ``netcal`` would
bring pyro-ppl, gpytorch and tensorboard into every install for them.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgecxr.eval.metrics import _percentiles, _resample_index

N_BINS = 15
EPS = 1e-12
METRICS = ("ece", "adaptive_ece", "brier", "nll")


def _conf_correct(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    return p.max(axis=-1), (p.argmax(axis=-1) == np.asarray(y)).astype(np.float64)


def _equal_width_bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin i holds confidences in (i/n, (i+1)/n]; 0 goes to the first bin."""
    return np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)


def _ece_rows(conf: np.ndarray, correct: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """ECE of every row of (R x N) arrays whose bin numbers are given."""
    r, n = conf.shape
    flat = (bins + n_bins * np.arange(r)[:, None]).ravel()
    size = r * n_bins
    gap = np.bincount(flat, weights=(conf - correct).ravel(), minlength=size).reshape(r, n_bins)
    return np.abs(gap).sum(axis=1) / n


def ece(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """sum_b |B|/N * |accuracy(B) - mean confidence(B)| over equal-width confidence bins."""
    conf, correct = _conf_correct(probs, y)
    return float(_ece_rows(conf[None], correct[None], _equal_width_bins(conf, n_bins)[None], n_bins)[0])


def _adaptive_rows(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-mass bins: each row sorted by confidence, cut into ``n_bins`` near-equal runs."""
    order = np.argsort(conf, axis=1, kind="stable")
    n = conf.shape[1]
    bins = np.empty_like(order)
    ranks = np.arange(n)
    # np.array_split's rule: the first n % n_bins runs get one extra element
    edges = np.cumsum([len(a) for a in np.array_split(ranks, min(n_bins, n))])
    bin_of_rank = np.searchsorted(edges, ranks, side="right")
    np.put_along_axis(bins, order, np.broadcast_to(bin_of_rank, order.shape), axis=1)
    return _ece_rows(conf, correct, bins, min(n_bins, n))


def adaptive_ece(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    conf, correct = _conf_correct(probs, y)
    return float(_adaptive_rows(conf[None], correct[None], n_bins)[0])


def _brier_each(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(p.shape[1])[np.asarray(y, dtype=int)]
    return ((p - onehot) ** 2).sum(axis=1)


def _nll_each(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    return -np.log(np.clip(p[np.arange(len(p)), np.asarray(y, dtype=int)], EPS, 1.0))


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of sum_k (p_k - [y = k])^2 (0 best, 2 worst)."""
    return float(_brier_each(probs, y).mean())


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(_nll_each(probs, y).mean())


def point_calibration(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> dict[str, float]:
    return {"ece": ece(probs, y, n_bins), "adaptive_ece": adaptive_ece(probs, y, n_bins), "brier": brier(probs, y), "nll": nll(probs, y)}


def bootstrap_calibration(probs: np.ndarray, y: np.ndarray, n_boot: int = 1000, seed: int = 0,
                          n_bins: int = N_BINS) -> dict[str, tuple[float, float]]:
    """Percentile 95% CIs of every calibration metric from ``n_boot`` resamples of the images."""
    y = np.asarray(y, dtype=int)
    idx = _resample_index(len(y), n_boot, seed)
    conf, correct = _conf_correct(probs, y)
    cb, kb = conf[idx], correct[idx]
    boot = {
        "ece": _ece_rows(cb, kb, _equal_width_bins(cb, n_bins), n_bins),
        "adaptive_ece": _adaptive_rows(cb, kb, n_bins),
        "brier": _brier_each(probs, y)[idx].mean(axis=1),
        "nll": _nll_each(probs, y)[idx].mean(axis=1),
    }
    out = {}
    for key, v in boot.items():
        lo, hi = _percentiles(v[:, None])
        out[key] = (float(lo[0]), float(hi[0]))
    return out


def calibration_metrics(probs: np.ndarray, y: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``{metric: {"value": v, "ci95": [lo, hi]}}`` for ECE, adaptive ECE, Brier and NLL."""
    point = point_calibration(probs, y)
    cis = bootstrap_calibration(probs, y, n_boot, seed) if n_boot > 0 else {}
    return {k: {"value": point[k], "ci95": list(cis.get(k, (float("nan"), float("nan"))))} for k in METRICS}


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> list[dict[str, float]]:
    """The reliability diagram's data: per equal-width bin, its count, mean confidence and accuracy."""
    conf, correct = _conf_correct(probs, y)
    bins = _equal_width_bins(conf, n_bins)
    out = []
    for b in range(n_bins):
        m = bins == b
        out.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": int(m.sum()),
                    "confidence": float(conf[m].mean()) if m.any() else float("nan"),
                    "accuracy": float(correct[m].mean()) if m.any() else float("nan")})
    return out
