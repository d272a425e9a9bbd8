"""The go / no-go rules of ``edgecxr sitecheck`` (and of the device's drift watch): each a flag
with a documented default. numpy and stdlib only, so the Pi applies the very same rules.

Every failed rule becomes one reason in the final line, with the numbers behind it.
Which rules decide depends on what is known about the site:

- **Without labels** nothing says whether the model is right there, so every sign of a
  different site is a NO-GO (as cautious as a check can be without labels):
  ``max_refused``, ``max_ks`` with ``ks_alpha``, ``max_prevalence_shift``.
- **With labels** the labels say it: per-class sensitivity (``min_sensitivity``) and the
  share of each class answered as a wrong class (``max_wrong_call``), plus
  ``max_refused`` (a real radiograph refused as "not a chest X-ray" is a wrong reason),
  decide; an OOD-score or class-mix shift the labels show to be harmless is a
  **warning** in the line, not a NO-GO.

The rules:

- ``max_refused`` (0.10): share of readable images the runner would refuse
  (unusable image or "not a chest X-ray"). The not-a-CXR cut sits above every validation
  CXR's score, so the expected share on real radiographs like them is about 0.
- ``max_ks`` (0.20) with ``ks_alpha`` (0.01): the OOD score moved toward *less
  familiar* (one-sided KS, :func:`ks_shift`); a site whose images score lower than
  validation is more familiar, not less, and never fails this rule. Both numbers must
  hold: D alone is noisy on a small site, p alone flags trivial shifts on a large one.
- ``max_prevalence_shift`` (0.15): some class's BBSE 95% interval lies entirely
  more than 0.15 away from its reference prevalence: the training mix, or with
  ``--labels`` the labelled mix.
- ``min_sensitivity`` (0.90, labelled images only): a class whose sensitivity
  (point estimate, its CI shown) on the site's labelled images is below it.
- ``max_wrong_call`` (0.05, labelled images only): a class of which more than this
  share is *answered* as another class (referrals and refusals are not wrong answers).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

GO, NO_GO = "GO", "NO-GO"
FALLBACK_SCORE = {"method": "energy"}  # for a model without an OOD block: a logit-only score, for the shift test only


def score_spec(block: dict[str, Any] | None) -> dict[str, Any]:
    """The OOD score a site's shift is measured with (sitecheck and the drift watch): the one the
    runner refuses and refers by, or a logit-only stand-in where the model has none."""
    return (block or {}).get("ood") or FALLBACK_SCORE


@dataclass(frozen=True)
class Rules:
    max_refused: float = 0.10
    max_ks: float = 0.20
    ks_alpha: float = 0.01
    max_prevalence_shift: float = 0.15
    min_sensitivity: float = 0.90
    max_wrong_call: float = 0.05

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def ks_shift(site_scores: np.ndarray, ref_scores: np.ndarray) -> dict[str, Any]:
    """Kolmogorov-Smirnov test of a site's OOD scores against the reference (validation) scores,
    one-sided: only a shift toward *larger* scores (less familiar images) counts. ``d`` is the
    largest amount by which the reference's empirical CDF lies above the site's, ``p`` its
    asymptotic p-value ``exp(-2 n_e d^2)`` (Smirnov; ``n_e = n m / (n + m)``). A site whose images
    are *more* familiar than validation has ``d`` near 0 whatever its two-sided distance, which is
    reported beside it (``d_two_sided``). numpy only: the device's drift watch calls this too."""
    site = np.sort(np.asarray(site_scores, dtype=np.float64).reshape(-1))
    ref = np.sort(np.asarray(ref_scores, dtype=np.float64).reshape(-1))
    n, m = len(site), len(ref)
    out: dict[str, Any] = {"n_site": n, "n_reference": m, "alternative": "site scores larger (less familiar)"}
    if n == 0 or m == 0:
        return {**out, "d": float("nan"), "p": float("nan"), "d_two_sided": float("nan")}
    grid = np.concatenate([site, ref])
    cdf_site = np.searchsorted(site, grid, side="right") / n
    cdf_ref = np.searchsorted(ref, grid, side="right") / m
    gap = cdf_ref - cdf_site
    d = max(float(gap.max()), 0.0)
    p = float(min(1.0, np.exp(-2.0 * (n * m / (n + m)) * d * d)))
    return {**out, "d": d, "p": p, "d_two_sided": float(np.abs(gap).max()),
            "site_median": float(np.median(site)), "reference_median": float(np.median(ref))}


def fmt_p(p: float) -> str:
    return "p<1e-6" if p < 1e-6 else f"p={p:.2g}"


def _label_shift(m: dict[str, Any], rules: Rules) -> tuple[list[str], str]:
    ls = m.get("label_shift")
    if not ls:
        return [], "class mix not estimated (no image reached the model)"
    if "ci95" not in ls:
        return [], "label-shift rule not applied (no bootstrap intervals: --bootstrap 0)"
    labelled = m.get("labelled")
    ref = labelled["class_mix"] if labelled else m["train_mix"]
    reasons = []
    for c, name in enumerate(m["classes"]):
        lo, hi = ls["ci95"][c]
        q, r = ls["prevalence"][c], ref[name]
        if lo > r + rules.max_prevalence_shift or hi < r - rules.max_prevalence_shift:
            bbse = f"BBSE: {name} prevalence {q:.2f} [{lo:.2f}, {hi:.2f}]"
            against = f"where {r:.0%} are {name}" if labelled else f"against {r:.0%} in training"
            reasons.append(f"{ls['predicted_share'][c]:.0%} of {'labelled ' if labelled else ''}images called {name} {against} ({bbse})")
    if labelled and reasons:  # one reason: the mix is known, so the model's confusion matrix is what moved
        reasons = [", ".join(reasons) + ": the validation confusion matrix does not hold at this site"]
    where = "the labelled mix" if labelled else "training"
    return reasons, f"BBSE class mix within {rules.max_prevalence_shift:.2f} of {where} for every class"


def _refused(m: dict[str, Any], rules: Rules) -> tuple[list[str], list[str]]:
    r = m["refused"]
    text = (f"{r['total']:.0%} of {m['n_images']} images refused ({r['quality']:.0%} unusable, "
            f"{r['ood']:.0%} not a chest X-ray)")
    bad = r["total"] > rules.max_refused
    return ([f"{text} > {rules.max_refused:.0%}"], []) if bad else ([], [f"{text} <= {rules.max_refused:.0%}"])


def _ks(m: dict[str, Any], rules: Rules) -> tuple[list[str], list[str]]:
    ks = m["ood_score"]
    d, p = ks["d"], ks["p"]
    if d != d:
        return [], []
    if d > rules.max_ks and p < rules.ks_alpha:
        return [f"OOD score shifted toward unfamiliar (one-sided KS D={d:.2f}, {fmt_p(p)} against {ks['n_reference']} "
                "validation images)"], []
    return [], [f"OOD score KS D={d:.2f} toward unfamiliar, {fmt_p(p)} (NO-GO needs D > {rules.max_ks:.2f} with p < {rules.ks_alpha:g})"]


def _labelled(lab: dict[str, Any], rules: Rules) -> tuple[list[str], list[str]]:
    """Sensitivity and wrong calls per labelled class: the rules that decide when labels are known."""
    low, wrong = [], []
    for name, c in lab["per_class"].items():
        s = c["sensitivity"]
        if s["value"] < rules.min_sensitivity:
            lo, hi = s["ci95"]
            low.append(f"on {c['n']} labelled {name} images sensitivity {s['value']:.2f} [{lo:.2f}, {hi:.2f}] < {rules.min_sensitivity:.2f}")
        for other, share in c["called"].items():
            if other != name and share > rules.max_wrong_call:
                wrong.append(f"{share:.1%} of {c['n']} labelled {name} images answered {other} > {rules.max_wrong_call:.0%}")
    passed = []
    if not low:
        passed.append(f"sensitivity >= {rules.min_sensitivity:.2f} for {', '.join(lab['per_class'])}")
    if not wrong:
        passed.append(f"no class answered as another in more than {rules.max_wrong_call:.0%} of its images")
    return low + wrong, passed


def judge(m: dict[str, Any], rules: Rules) -> dict[str, Any]:
    """``{"verdict": GO | NO-GO, "reasons": [...], "warnings": [...], "passed": [...], "line": "NO-GO: ..."}``.
    With labels (``m["labelled"]``) the shift rules only warn (module docstring)."""
    lab = m.get("labelled")
    reasons, passed = _refused(m, rules)
    ks_bad, ks_ok = _ks(m, rules)
    shift_bad, shift_ok = _label_shift(m, rules)
    shifts = ks_bad + shift_bad
    passed += ks_ok + ([shift_ok] if not shift_bad else [])
    warnings: list[str] = []
    if lab:
        bad, ok = _labelled(lab, rules)
        reasons += bad
        passed += ok
        warnings = [f"{w} (the labels show the model holds up: a warning, not a NO-GO)" for w in shifts] if not bad else []
        reasons += shifts if bad else []
    else:
        reasons += shifts
    verdict = NO_GO if reasons else GO
    line = f"{NO_GO}: " + "; ".join(reasons) if reasons else f"{GO}: " + "; ".join(passed)
    if warnings and verdict == GO:
        line += "; WARNING: " + "; ".join(warnings)
    return {"verdict": verdict, "reasons": reasons, "warnings": warnings, "passed": passed, "line": line, "rules": rules.to_dict()}
