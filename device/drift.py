"""Is the device still seeing the images its model was validated on? ``edgecxr sitecheck``'s rules,
applied on the device to a rolling window of its own results.

``sitecheck`` is a one-time acceptance test on a workstation; a scanner's firmware update or a
new export preset months later changes the images without anyone re-running it. The device
keeps the last ``window`` results (default 200) and judges them with the very rules of
``sitecheck`` (``site_rules.Rules``, ``judge``, ``ks_shift``: one implementation, numpy only):
the OOD score's one-sided KS shift against the validation scores stored in the model's
contract (``decision.reference``, written by convert's refit and by ``sitecheck --stamp``),
the refused share, and the BBSE class mix against the training mix (``label_shift.bbse``).
The referred share is tracked and shown beside them (sitecheck has no rule for it). When the
verdict turns NO-GO the caller gets one ``DRIFT`` event (a log line, an audit line, the page's
banner), and one more when it turns back to GO; nothing is emitted while it stays the same.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from .label_shift import bbse
from .ood import ood_scores
from .site_rules import GO, NO_GO, Rules, judge, ks_shift, score_spec

DEFAULT_WINDOW = 200
REFERENCE_SCHEMA = "edgecxr.reference/1"
BOOTSTRAP = 1000  # sitecheck's default resamples for the BBSE intervals


def stored_reference(block: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """The contract's compact validation reference, or ``None`` and why it cannot be used (the
    same staleness rule as sitecheck: it must name the OOD method and threshold now in force)."""
    ref = (block or {}).get("reference")
    if not ref or ref.get("schema") != REFERENCE_SCHEMA:
        return None, ("off: the model stores no validation reference (convert it again with this version, "
                      "or run edgecxr sitecheck --stamp)")
    spec = score_spec(block)
    if ref.get("score") != {"method": spec.get("method"), "threshold": spec.get("threshold")}:
        return None, "off: the stored validation reference predates the model's current OOD threshold"
    return ref, ""


class DriftWatch:
    """Feed it every result record (:meth:`update`); it says when sitecheck's rules turn NO-GO."""

    def __init__(self, classes: tuple[str, ...], block: dict[str, Any] | None, window: int = DEFAULT_WINDOW,
                 rules: Rules | None = None, n_boot: int = BOOTSTRAP, every: int | None = None) -> None:
        self.classes, self.window, self.rules, self.n_boot = tuple(classes), window, rules or Rules(), n_boot
        # judged every `every` images once the window is full (a BBSE bootstrap costs ~6 ms here): a
        # verdict change is seen within a twentieth of the window
        self.every = every or max(1, window // 20)
        self.spec = score_spec(block)
        ref, self.disabled = stored_reference(block)
        self.items: deque[tuple[str, float | None, int | None]] = deque(maxlen=window)
        self.verdict: str | None = None
        self.last: dict[str, Any] | None = None
        self.seen = 0
        if ref is not None:
            k = len(self.classes)
            counts = np.asarray(ref["confusion_counts"], dtype=int)  # [pred][y]
            self.ref_pred, self.ref_y = np.divmod(np.repeat(np.arange(k * k), counts.ravel()), k)
            self.ref_scores = np.asarray(ref["ood_scores"], dtype=np.float64)
            train = [float(ref["train_counts"].get(c, 0)) for c in self.classes]
            self.train_mix = dict(zip(self.classes, (np.array(train) / max(sum(train), 1.0)).tolist()))

    @classmethod
    def for_contract(cls, contract: Any, window: int = DEFAULT_WINDOW) -> DriftWatch:
        return cls(tuple(contract.classes), contract.decision, window)

    def _score(self, rec: dict[str, Any]) -> float | None:
        if rec.get("ood_score") is not None:
            return float(rec["ood_score"])
        logits = rec.get("logits")
        return float(ood_scores(np.asarray(logits, dtype=np.float64).reshape(1, -1), self.spec)[0]) if logits is not None else None

    def update(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        """Add one result; a DRIFT event dict (``line`` is the log line) when the verdict changes, else None."""
        if self.disabled:
            return None
        kind = rec.get("reason_kind") or ((rec.get("refusal") or {}).get("kind") if rec.get("action") == "refuse" else None)
        label = rec.get("label") if rec.get("action") != "refuse" else None
        top = max(rec["probabilities"], key=rec["probabilities"].get) if rec.get("probabilities") else label
        pred = self.classes.index(top) if top in self.classes else None
        action = rec.get("action") or "answer"
        self.items.append((f"{action}:{kind or ''}", self._score(rec) if pred is not None else None, pred))
        self.seen += 1
        if len(self.items) < self.window or (self.seen - self.window) % self.every:
            return None
        self.last = judge(self.measure(), self.rules)
        old, self.verdict = self.verdict, self.last["verdict"]
        if self.verdict == old or (old is None and self.verdict == GO):
            return None
        word = "DRIFT" if self.verdict == NO_GO else "DRIFT cleared"
        return {"drift": self.verdict, "window": len(self.items), "images_seen": self.seen, "reasons": self.last["reasons"],
                "line": f"{word} over the last {len(self.items)} images: {self.last['line']}"}

    def measure(self) -> dict[str, Any]:
        """The numbers ``site_rules.judge`` reads, in sitecheck's ``measure`` layout, for the window."""
        acts = [a for a, _s, _p in self.items]
        n = len(acts)
        refuse_q = sum(a == "refuse:quality" for a in acts) / n
        refuse_o = sum(a.startswith("refuse:") and a != "refuse:quality" for a in acts) / n
        scores = np.array([s for _a, s, _p in self.items if s is not None], dtype=np.float64)
        preds = np.array([p for _a, _s, p in self.items if p is not None], dtype=int)
        m: dict[str, Any] = {
            "classes": list(self.classes), "n_images": n,
            "refused": {"quality": refuse_q, "ood": refuse_o, "total": refuse_q + refuse_o,
                        "refer": sum(a.startswith("refer") for a in acts) / n, "answer": sum(a.startswith("answer") for a in acts) / n},
            "ood_score": {"method": self.spec.get("method"), "threshold": self.spec.get("threshold"),
                          **ks_shift(scores, self.ref_scores)},
            "train_mix": self.train_mix,
        }
        if len(preds):
            m["label_shift"] = bbse(self.ref_y, self.ref_pred, preds, len(self.classes), n_boot=self.n_boot)
        return m

    def status(self) -> dict[str, Any]:
        """For the page: on/off, how full the window is, the verdict and its line, the shares."""
        if self.disabled:
            return {"state": "off", "line": f"drift watch {self.disabled}"}
        if self.last is None:
            return {"state": "filling", "line": f"drift watch: {len(self.items)} of {self.window} images in the window; "
                                                "judged once it is full", "window": self.window, "n": len(self.items)}
        return {"state": self.verdict, "line": self.last["line"], "window": self.window, "n": len(self.items)}
