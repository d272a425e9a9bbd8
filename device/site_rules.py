"""The go / no-go rules of ``edgecxr sitecheck``: each a flag with a documented default.

A site is NO-GO when any rule fails; every failed rule becomes one reason in the
final line, with the numbers behind it:

- ``max_refused`` (0.10): share of readable images the runner would refuse
  (unusable image or "not a chest X-ray"). The OOD threshold keeps 95% of the
  validation CXRs, so about 5% is the expected share on images like the training
  ones; above 10% a clinic loses a tenth of its studies to "no prediction".
- ``max_ks`` (0.20) with ``ks_alpha`` (0.01): the OOD score's distribution moved.
  Both must hold: D alone is noisy on a small site, p alone flags trivial shifts on
  a large one.
- ``max_prevalence_shift`` (0.15): some class's BBSE 95% interval lies entirely
  more than 0.15 away from its reference prevalence: the training mix, or with
  ``--labels`` the labelled mix (a folder sorted by class has whatever mix its
  collector chose, and BBSE far from a known mix says the model's confusion
  matrix does not hold at the site).
- ``min_sensitivity`` (0.90, labelled images only): a class whose sensitivity
  (point estimate, its CI shown) on the site's labelled images is below it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

GO, NO_GO = "GO", "NO-GO"


@dataclass(frozen=True)
class Rules:
    max_refused: float = 0.10
    max_ks: float = 0.20
    ks_alpha: float = 0.01
    max_prevalence_shift: float = 0.15
    min_sensitivity: float = 0.90

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


def judge(m: dict[str, Any], rules: Rules) -> dict[str, Any]:
    """``{"verdict": GO | NO-GO, "reasons": [...], "passed": [...], "line": "NO-GO: ..."}``."""
    reasons: list[str] = []
    passed: list[str] = []
    r = m["refused"]
    refused = (f"{r['total']:.0%} of {m['n_images']} images refused ({r['quality']:.0%} unusable, "
               f"{r['ood']:.0%} not a chest X-ray)")
    (reasons if r["total"] > rules.max_refused else passed).append(
        f"{refused} {'>' if r['total'] > rules.max_refused else '<='} {rules.max_refused:.0%}")
    ks = m["ood_score"]
    d, p = ks["d"], ks["p"]
    if d == d and d > rules.max_ks and p < rules.ks_alpha:
        reasons.append(f"OOD score shifted (KS D={d:.2f}, {fmt_p(p)} against {ks['n_reference']} validation images)")
    elif d == d:
        passed.append(f"OOD score KS D={d:.2f}, {fmt_p(p)} (NO-GO needs D > {rules.max_ks:.2f} with p < {rules.ks_alpha:g})")
    shift_reasons, shift_ok = _label_shift(m, rules)
    reasons += shift_reasons
    if not shift_reasons:
        passed.append(shift_ok)
    lab = m.get("labelled")
    if lab:
        low = []
        for name, c in lab["per_class"].items():
            s = c["sensitivity"]
            if s["value"] < rules.min_sensitivity:
                lo, hi = s["ci95"]
                low.append(f"on {c['n']} labelled {name} images sensitivity {s['value']:.2f} [{lo:.2f}, {hi:.2f}] < {rules.min_sensitivity:.2f}")
        reasons += low
        if not low:
            passed.append(f"sensitivity >= {rules.min_sensitivity:.2f} for {', '.join(lab['per_class'])}")
    verdict = NO_GO if reasons else GO
    line = f"{NO_GO}: " + "; ".join(reasons) if reasons else f"{GO}: " + "; ".join(passed)
    return {"verdict": verdict, "reasons": reasons, "passed": passed, "line": line, "rules": rules.to_dict()}
