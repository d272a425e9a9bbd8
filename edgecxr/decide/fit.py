"""Fitting the contract's decision block: temperature and the conformal threshold.

Both are fitted on the run's validation split, never on test. By default both use
the whole validation split; ``disjoint=True`` cuts it in two stratified halves by
a hash of each file name (reproducible; the same halves for every format), one for
the temperature and one for the conformal threshold.

Why shared by default, measured on the README's QAT MobileNetV2 (300 validation
images, 6 misclassified; docs/results/decision.md "Calibrated probabilities"): the halves held 2 and 4 (FP32)
and 0 and 4 (INT8) errors, and T fitted on a half with 0-2 errors sharpened the
model (T 0.05-0.55) and made test NLL worse (INT8: 0.031 -> 0.225), while T on all
300 images improved test NLL and adaptive ECE. Split conformal's finite-sample
guarantee assumes a score fixed before the calibration images are seen; sharing
them with a one-parameter T fit departs from that by O(1/n) (test coverage at 0.95
measured 0.953-0.963 either way). With a large validation split, use ``disjoint``.

A split whose fit images hold no misclassification cannot identify T (the NLL keeps
falling as T -> 0); T then stays 1 and the block says why. Otherwise temperature
scaling has one parameter and the NLL is convex in 1/T, so a bounded 1-D search
(scipy) finds the exact minimum; a library adds nothing here. The device side
applying both numbers is ``device/decision.py``.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from edgecxr.data.folders import Sample
from edgecxr.decide.reliability import nll, point_calibration
from edgecxr.device.decision import CONFORMAL_METHODS, SCHEMA, calibrated_probabilities, conformal_scores, set_mask
from edgecxr.errors import EdgecxrError

T_BOUNDS = (0.05, 20.0)
DEFAULT_COVERAGE = 0.95
# Measured on both trained models (docs/results/decision.md "Calibrated probabilities"): LAC met coverage with
# the smallest sets; APS's sets were larger at the same coverage.
DEFAULT_METHOD = "lac"


def _hash_key(s: Sample) -> str:
    return hashlib.sha256(s.file.encode("utf-8")).hexdigest()


def split_halves(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(temperature half, conformal half): per class, files ordered by the hash of their
    name and dealt alternately, so both halves keep the class balance."""
    a: list[Sample] = []
    b: list[Sample] = []
    for label in sorted({s.label for s in samples}):
        ranked = sorted((s for s in samples if s.label == label), key=_hash_key)
        a += ranked[0::2]
        b += ranked[1::2]
    return a, b


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """T minimising the mean NLL of softmax(logits / T); with before/after numbers."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=int)
    if len(y) < 2:
        raise EdgecxrError("temperature scaling needs at least two validation images")

    errors = int((z.argmax(1) != y).sum())
    plain = point_calibration(calibrated_probabilities(z, None), y)
    if errors == 0:
        return {"temperature": 1.0, "n": len(y), "errors": 0, "at_bound": False, "not_identifiable": True,
                "nll_before": plain["nll"], "nll_after": plain["nll"], "ece_before": plain["ece"], "ece_after": plain["ece"]}

    def loss(log_t: float) -> float:
        return nll(calibrated_probabilities(z, {"temperature": math.exp(log_t)}), y)

    lo, hi = math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])
    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-7})
    t = float(math.exp(res.x))
    after = point_calibration(calibrated_probabilities(z, {"temperature": t}), y)
    return {"temperature": t, "n": len(y), "errors": errors,
            "at_bound": bool(min(abs(res.x - lo), abs(res.x - hi)) < 1e-3),
            "nll_before": plain["nll"], "nll_after": after["nll"], "ece_before": plain["ece"], "ece_after": after["ece"]}


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ceil((n+1)(1-alpha))-th smallest score; 1.0 (every class) when n is too small for it."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    rank = math.ceil((n + 1) * coverage)
    return 1.0 if rank > n else float(s[rank - 1])


def pac_quantile(scores: np.ndarray, coverage: float, delta: float) -> float:
    """The k-th smallest score with k the smallest rank whose coverage ``Beta(k, n + 1 - k)`` falls below
    ``coverage`` with probability at most ``delta`` (a training-conditional, "PAC" split-conformal
    threshold, Vovk 2012): on 100 images per class the plain quantile covers one class below its target
    about half the time; this one at most ``delta`` of the time. 1.0 (every class) when n is too small."""
    from scipy.stats import beta

    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    for k in range(math.ceil((n + 1) * coverage), n + 1):
        if beta.cdf(coverage, k, n + 1 - k) <= delta:
            return float(s[k - 1])
    return 1.0


def _check_n(n: int, coverage: float, what: str) -> None:
    if math.ceil((n + 1) * coverage) > n:
        raise EdgecxrError(f"{n} calibration images{what} cannot certify coverage {coverage}: need at least "
                           f"{math.ceil(coverage / (1 - coverage))}; lower --coverage or use more validation images")


def fit_conformal(probs: np.ndarray, y: np.ndarray, coverage: float = DEFAULT_COVERAGE, method: str = DEFAULT_METHOD,
                  per_class: bool = False, delta: float | None = None) -> dict[str, Any]:
    """The threshold on the true class's score that ``coverage`` of calibration images stay under.

    ``per_class``: one threshold per true class from that class's images only
    (class-conditional, "Mondrian" conformal), so each class keeps the coverage,
    not just their mix; needs enough calibration images of every class.
    """
    if not 0.0 < coverage < 1.0:
        raise EdgecxrError(f"--coverage must be between 0 and 1 (e.g. 0.95), got {coverage}")
    if method not in CONFORMAL_METHODS:
        raise EdgecxrError(f"--method {method!r}: choose one of {', '.join(CONFORMAL_METHODS)}")
    y = np.asarray(y, dtype=int)
    scores = conformal_scores(probs, method)[np.arange(len(y)), y]
    _check_n(len(y), coverage, "")
    out = {"method": method, "coverage": float(coverage), "qhat": conformal_quantile(scores, coverage), "n": len(y)}
    if method == "lac":
        out["empty"] = "fill"  # an empty set names the classes the image is split between (device/decision.py: set_mask)
    if per_class:
        k = np.asarray(probs).shape[1]
        for c in range(k):
            _check_n(int((y == c).sum()), coverage, f" of class {c}")
        if delta is None:
            out["qhat_per_class"] = [conformal_quantile(scores[y == c], coverage) for c in range(k)]
        else:
            out["qhat_per_class"] = [pac_quantile(scores[y == c], coverage, delta) for c in range(k)]
            out["delta"] = float(delta)
        out["n_per_class"] = [int((y == c).sum()) for c in range(k)]
    return out


def _binomial_ci(k: int, n: int) -> list[float]:
    """Clopper-Pearson 95% interval of a proportion."""
    from scipy.stats import beta

    if n == 0:
        return [float("nan"), float("nan")]
    lo = 0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k))
    return [lo, hi]


def _set_stats(mask: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    covered = mask[np.arange(len(y)), y]
    sizes = mask.sum(axis=1)
    k = int(covered.sum())
    return {"n": len(y), "coverage": float(covered.mean()) if len(y) else float("nan"), "coverage_ci95": _binomial_ci(k, len(y)),
            "mean_set_size": float(sizes.mean()) if len(y) else float("nan"),
            "singleton": float((sizes == 1).mean()) if len(y) else float("nan"),
            "empty": float((sizes == 0).mean()) if len(y) else float("nan"),
            "refer": float((sizes != 1).mean()) if len(y) else float("nan")}


def coverage_report(probs: np.ndarray, y: np.ndarray, classes: list[str], conformal: dict[str, Any]) -> dict[str, Any]:
    """Empirical coverage and set sizes, overall and per true class, with binomial CIs.

    ``refer`` is the fraction of images whose set is not exactly one class; among
    the answered ones (singletons), ``answered_accuracy`` is how often that one class is right.
    """
    y = np.asarray(y, dtype=int)
    mask = set_mask(probs, conformal)
    out = _set_stats(mask, y)
    single = mask.sum(axis=1) == 1
    right = single & mask[np.arange(len(y)), y]
    out["answered_accuracy"] = float(right.sum() / single.sum()) if single.any() else float("nan")
    out["target_coverage"] = float(conformal["coverage"])
    out["method"] = conformal.get("method", "lac")
    out["qhat"] = float(conformal["qhat"])
    out["per_class"] = {name: _set_stats(mask[y == c], y[y == c]) for c, name in enumerate(classes)}
    return out


def fit_images(samples: list[Sample], disjoint: bool) -> tuple[list[Sample], list[Sample]]:
    """(images for T, images for the conformal threshold) from the validation samples."""
    return split_halves(samples) if disjoint else (samples, samples)


def decision_block(t_fit: dict[str, Any], conformal: dict[str, Any], provenance: dict[str, Any], disjoint: bool,
                   existing: dict[str, Any] | None = None) -> dict[str, Any]:
    """A decision block with new temperature and conformal numbers; other keys (``ood``,
    ``quality``, fitted by their own command) are kept."""
    block = dict(existing or {})
    block["schema"] = SCHEMA
    block["temperature"] = t_fit["temperature"]
    images = "disjoint halves of the validation split" if disjoint else "the whole validation split (shared by T and conformal)"
    block["calibration"] = {**{k: v for k, v in t_fit.items() if k != "temperature"}, **provenance, "images": images}
    block["conformal"] = {**conformal, **provenance, "images": images}
    return block
