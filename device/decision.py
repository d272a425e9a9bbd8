"""When not to answer: the contract's ``decision`` block applied with numpy alone.

A softmax says COVID with 0.99 for anything it is shown. The workstation fits a few
numbers (``edgecxr calibrate``) that the device applies in a fixed order, so the Pi
gives the answer the evaluation measured:

1. image-quality refusal (blank, saturated, tiny, near-constant): needs no model;
2. "not a chest X-ray" refusal (``ood``): a score above every validation CXR's (times a
   margin, default 1), so that (almost) no real radiograph is told it is not one;
3. "unfamiliar image" referral (``unfamiliar``): a chest X-ray unlike the ones the
   model was validated on is referred, never refused, with its score in the reason;
4. calibrated probabilities, ``softmax(logits / T)``;
5. the conformal prediction set; one class is an answer, any other size is a referral:
   "uncertain between COVID and Normal: refer" (several), or "no class probable enough:
   refer" (none, only in blocks fitted before ``"empty": "fill"``: an empty LAC set is now
   filled with the most probable classes up to the same mass, see :func:`set_mask`).

Every verdict carries one ``reason`` (the answer itself, or why there is none) and its
``reason_kind`` (``answer``, ``uncertain``, ``unfamiliar``, ``not_cxr``, ``quality``, and
``intended_use`` where a DICOM header is outside the model's intended use, ``device/gated.py``):
the runner prints it, and every report counts the shares of each kind.

Schema (``contract["decision"]``, every key optional; absent means "not fitted"):

    {
      "schema": "edgecxr.decision/1",
      "temperature": 1.37,                 # T > 0; probabilities = softmax(logits / T)
      "calibration": {...},                # provenance: split, n, NLL before/after (reports only)
      "conformal": {
        "method": "lac" | "aps",           # score: LAC 1 - p_y; APS cumulative mass down to y
        "coverage": 0.95,                  # 1 - alpha the threshold was fitted for
        "qhat": 0.71,                      # set = {k : score(x, k) <= qhat}, on calibrated probs
        "qhat_per_class": [0.6, 0.8, 0.7], # optional (class-conditional, "Mondrian"): score(x, k) <= qhat_per_class[k]
        "empty": "fill",                   # optional, LAC: an empty set becomes the top classes holding 1 - qhat of the mass
        "n": 1200, "split": "val", ...     # provenance (reports only)
      },
      "ood": {...},                        # owned by device/ood.py (see ood_refusal): "not a chest X-ray"
      "unfamiliar": {...},                 # owned by device/ood.py (see unfamiliar_flag): refer, not refuse
      "quality": {...},                    # owned by device/ood.py (see quality_refusal)
      "site": {                            # optional: refitted on one site's labelled images (edgecxr sitecheck --stamp)
        "name": "clinic_a", "verdict": "GO", ...,   # provenance (reports only)
        "temperature": 1.9,                # replaces the model's T on this device, where present
        "conformal": {"qhat": 0.4, ...}    # replaces the model's qhat (and any qhat_per_class), where present
      }
    }

A site block changes T and qhat and, where stamped, the "unfamiliar" threshold (a site's
own labelled CXRs are, by definition, familiar there). It may raise the "not a chest X-ray"
cut so that the site's own radiographs pass it, never lower it: that cut keeps meaning
"not a radiograph". :func:`in_force` is the one place that
applies it, and :func:`decide` (the runner's path) the one caller; reports of the
model's own split (``edgecxr eval``) keep the model's numbers.

``ood`` and ``quality`` are defined by ``device/ood.py``, which must provide::

    quality_refusal(gray: np.ndarray, spec: dict) -> Refusal | None   # uint8 HxW, before the model
    ood_refusal(logits: np.ndarray, features: np.ndarray | None, spec: dict) -> Refusal | None

Only the runner's numbers live here; fitting them is the workstation's job
(``edgecxr/decide/fit.py``). numpy + stdlib only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .refusal import Refusal

SCHEMA = "edgecxr.decision/1"
CONFORMAL_METHODS = ("lac", "aps")
# Floating-point slack when comparing a score with qhat: APS sums probabilities, and a
# class whose score equals qhat on the workstation must stay in the set on the Pi.
SCORE_SLACK = 1e-9

ANSWER, REFER, REFUSE = "answer", "refer", "refuse"
# Why a verdict is what it is: the kinds every report counts (``reason_kind``), in display order.
REASON_KINDS = ("answer", "uncertain", "unfamiliar", "not_cxr", "quality", "intended_use")  # intended_use: DICOM header gate
_REFUSAL_KINDS = {"ood": "not_cxr", "quality": "quality"}


class DecisionError(ValueError):
    """A decision block that cannot be applied (bad temperature, unknown method)."""


@dataclass(frozen=True)
class Verdict:
    """What the runner says about one image."""

    action: str  # ANSWER, REFER or REFUSE
    classes: tuple[str, ...]
    probabilities: np.ndarray | None = None  # calibrated; None when refused before the model
    prediction_set: tuple[str, ...] = ()
    refusal: Refusal | None = None  # why nothing is answered (REFUSE), or why a CXR is referred as unfamiliar (REFER)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str | None:
        """The top class when one is answered; ``None`` for refer and refuse."""
        return self.prediction_set[0] if self.action == ANSWER else None

    @property
    def reason_kind(self) -> str:
        """One of :data:`REASON_KINDS`."""
        if self.refusal is not None:
            return _REFUSAL_KINDS.get(self.refusal.kind, self.refusal.kind)
        return "answer" if self.action == ANSWER else "uncertain"

    @property
    def reason(self) -> str:
        """The one field that says why: the answer, or why there is none."""
        if self.refusal is not None:
            return self.refusal.reason
        if self.action == ANSWER:
            return self.prediction_set[0]
        if len(self.prediction_set) >= 2:
            return f"uncertain between {' and '.join(self.prediction_set)}: refer"
        return "no class probable enough (empty prediction set): refer"

    def line(self) -> str:
        """The plain-language decision, one line."""
        if self.action == ANSWER:
            return f"{self.prediction_set[0]} (set {{{', '.join(self.prediction_set)}}})"
        return self.reason

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "reason": self.reason, "reason_kind": self.reason_kind,
                               "decision": self.line(), "prediction_set": list(self.prediction_set)}
        if self.refusal is not None:
            out["refusal"] = {"kind": self.refusal.kind, "score": self.refusal.score, "threshold": self.refusal.threshold}
        return out


def site_is_stale(block: dict[str, Any] | None) -> bool:
    """True when the model's own T or qhat changed after the site block was stamped (``edgecxr
    calibrate`` again): the site's numbers were fitted against the old ones and must not apply."""
    site = (block or {}).get("site") or {}
    was = site.get("replaces")
    if was is None:
        return False
    now = {"temperature": (block or {}).get("temperature"), "qhat": ((block or {}).get("conformal") or {}).get("qhat")}
    return any(was.get(k) != now[k] for k in now)


def in_force(block: dict[str, Any] | None) -> dict[str, Any] | None:
    """The block the device applies: the model's own numbers, with a stamped site's refitted
    temperature and conformal threshold over them (``block["site"]``, see the module docstring),
    unless the site block is stale (:func:`site_is_stale`)."""
    site = (block or {}).get("site") or {}
    if not any(site.get(k) for k in ("temperature", "conformal", "unfamiliar", "ood")) or site_is_stale(block):
        return block
    out = dict(block or {})
    if site.get("temperature"):
        out["temperature"] = site["temperature"]
    if site.get("conformal"):
        own = {k: v for k, v in (out.get("conformal") or {}).items() if k not in ("qhat_per_class", "n_per_class")}
        out["conformal"] = {**own, **site["conformal"]}
    if site.get("unfamiliar") and out.get("unfamiliar"):  # the site's own CXRs set what "familiar" means there
        out["unfamiliar"] = {**out["unfamiliar"], **site["unfamiliar"]}
    site_cut = (site.get("ood") or {}).get("threshold")
    if site_cut is not None and out.get("ood") and float(site_cut) > float(out["ood"]["threshold"]):
        out["ood"] = {**out["ood"], "threshold": float(site_cut)}  # raised for the site's own radiographs, never lowered
    return out


def temperature(block: dict[str, Any] | None) -> float:
    """T from the block; 1.0 (plain softmax) where none was fitted."""
    t = float((block or {}).get("temperature", 1.0))
    if not np.isfinite(t) or t <= 0:
        raise DecisionError(f"decision temperature must be a positive number, got {t}")
    return t


def softmax(logits: np.ndarray) -> np.ndarray:
    """The one softmax of the project, in float64 (every runtime, report and the runner use it);
    here rather than in backends so backends can import this module."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def calibrated_probabilities(logits: np.ndarray, block: dict[str, Any] | None) -> np.ndarray:
    """``softmax(logits / T)`` in float64; the plain softmax without a fitted T."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature(block))


def conformal_scores(probs: np.ndarray, method: str) -> np.ndarray:
    """Nonconformity of every class for every row (N x K): larger = less plausible.

    LAC: ``1 - p_k``. APS: the probability mass of the classes ranked at or above k
    (deterministic, without the randomised tie term, so the Pi and the workstation
    build the same set).
    """
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if method == "lac":
        return 1.0 - p
    if method == "aps":
        order = np.argsort(-p, axis=1, kind="stable")
        ranked = np.take_along_axis(p, order, axis=1)
        cum = np.cumsum(ranked, axis=1)
        scores = np.empty_like(p)
        np.put_along_axis(scores, order, cum, axis=1)
        return scores
    raise DecisionError(f"conformal method {method!r} is not one of {CONFORMAL_METHODS}")


def set_mask(probs: np.ndarray, conformal: dict[str, Any]) -> np.ndarray:
    """N x K booleans: which classes are in each row's prediction set.

    LAC with ``"empty": "fill"``: a row no class reaches (every ``p_k < 1 - qhat``) gets the
    most probable classes whose mass reaches ``1 - qhat`` (the strictest class's, per class)
    instead of nothing. Measured on the README MobileNetV2 (docs/results/decision.md "Coverage
    per class"): every test CXR outside its LAC set had an empty set, an image split between
    two classes; filled, the set names them ("uncertain between COVID and Normal") and holds
    the true class. A filled set is a superset of the LAC set (the guarantee stands) with at
    least two classes (one class holding that mass was already in the set), so no answer changes."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    method = str(conformal.get("method", "lac"))
    scores = conformal_scores(p, method)
    per_class = conformal.get("qhat_per_class")
    qhat = np.asarray(per_class, dtype=np.float64) if per_class else float(conformal["qhat"])
    mask = scores <= qhat + SCORE_SLACK
    empty = ~mask.any(axis=1)
    if method == "lac" and conformal.get("empty") == "fill" and empty.any():
        order = np.argsort(-p[empty], axis=1, kind="stable")
        mass = np.cumsum(np.take_along_axis(p[empty], order, axis=1), axis=1)
        need = 1.0 - float(np.min(qhat)) - SCORE_SLACK
        keep = np.concatenate([np.ones((len(order), 1), bool), mass[:, :-1] < need], axis=1)  # up to the class that reaches it
        filled = np.zeros_like(keep)
        np.put_along_axis(filled, order, keep, axis=1)
        mask[empty] = filled
    return mask


def prediction_set(probs: np.ndarray, classes: tuple[str, ...] | list[str], conformal: dict[str, Any] | None) -> tuple[str, ...]:
    """Classes in the set, most probable first. Without a conformal block: the top class."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    order = np.argsort(-p, kind="stable")
    if not conformal:
        return (classes[int(order[0])],)
    mask = set_mask(p[None], conformal)[0]
    return tuple(classes[int(i)] for i in order if mask[i])


def quality_refusal(gray: np.ndarray, block: dict[str, Any] | None) -> Refusal | None:
    """Hook, filled by ``device/ood.py``: refuse an unusable image before the model runs."""
    spec = (block or {}).get("quality")
    if not spec:
        return None
    from . import ood  # owned by the OOD work; absent module with a quality block is a broken install

    return ood.quality_refusal(gray, spec)


def ood_refusal(logits: np.ndarray, features: np.ndarray | None, block: dict[str, Any] | None) -> Refusal | None:
    """Hook, filled by ``device/ood.py``: refuse an input that is not a chest X-ray."""
    spec = (block or {}).get("ood")
    if not spec:
        return None
    from . import ood

    return ood.ood_refusal(logits, features, spec)


def unfamiliar_flag(logits: np.ndarray, block: dict[str, Any] | None) -> Refusal | None:
    """Hook, filled by ``device/ood.py``: a chest X-ray unlike the validated ones is referred."""
    spec = (block or {}).get("unfamiliar")
    if not spec:
        return None
    from . import ood

    return ood.unfamiliar_flag(logits, spec)


def refused(refusal: Refusal, classes: tuple[str, ...], probabilities: np.ndarray | None = None) -> Verdict:
    return Verdict(REFUSE, tuple(classes), probabilities, (), refusal)


def decide(logits: np.ndarray, classes: tuple[str, ...] | list[str], block: dict[str, Any] | None,
           features: np.ndarray | None = None) -> Verdict:
    """One image's logits (and features, if the model exports them) -> its verdict.

    The image-quality check runs earlier, on pixels (:func:`quality_refusal`);
    this covers everything after the model.
    """
    classes = tuple(classes)
    block = in_force(block)
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    probs = calibrated_probabilities(z, block)
    refusal = ood_refusal(z, features, block)
    if refusal is not None:
        return refused(refusal, classes, probs)
    conformal = (block or {}).get("conformal")
    members = prediction_set(probs, classes, conformal)
    flag = unfamiliar_flag(z, block)
    if flag is not None:
        return Verdict(REFER, classes, probs, members, flag)
    action = ANSWER if len(members) == 1 else REFER
    return Verdict(action, classes, probs, members)


def reason_shares(kinds: list[str]) -> dict[str, float]:
    """Share of each of :data:`REASON_KINDS` among ``kinds`` (one per image): the table every report
    (eval, bench, sitecheck, the card, the drift watch) prints, so they all count the same way."""
    n = max(len(kinds), 1)
    return {k: sum(1 for x in kinds if x == k) / n for k in REASON_KINDS}


def summary(block: dict[str, Any] | None) -> str:
    """One line for the runner's header: what this model will refuse and how it is calibrated."""
    if not block:
        return "decision: none fitted (plain softmax, top-1 label, no refusals)"
    site, stale = block.get("site") or {}, site_is_stale(block)
    block = in_force(block)
    parts = [f"temperature {temperature(block):.4g}"]
    c = block.get("conformal")
    if c:
        per = " per class" if c.get("qhat_per_class") else ""
        parts.append(f"conformal {c.get('method', 'lac')} sets at coverage {float(c.get('coverage', float('nan'))):.3g}{per} (qhat {float(c['qhat']):.4g})")
    if block.get("ood"):
        parts.append(f"not-a-CXR refusal above {float(block['ood'].get('threshold', float('nan'))):.3g}")
    if block.get("unfamiliar"):
        parts.append(f"unfamiliar-image referral above {float(block['unfamiliar'].get('threshold', float('nan'))):.3g}")
    if block.get("quality"):
        parts.append("quality refusal on")
    if stale:
        parts.append(f"site {site.get('name', '?')}'s T and qhat ignored: the model was recalibrated after they were stamped")
    elif any(site.get(k) for k in ("temperature", "conformal", "unfamiliar")):
        parts.append(f"T, qhat and the unfamiliar cut refitted for site {site.get('name', '?')} ({site.get('date', '?')}, {site.get('verdict', '?')})")
    return "decision: " + ", ".join(parts)
