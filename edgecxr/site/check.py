"""Does a model hold up on a new site's images? The measurements behind ``edgecxr sitecheck``.

A model's test split comes from the site it was trained on; a clinic's scanner,
export pipeline and patients differ. Before deployment this runs the clinic's own
images through exactly what the device runs (``device/classify.py``'s order:
quality checks on the decoded image, the model, the OOD refusal, calibrated
probabilities, the conformal set; ``device/decision.py``) and compares them with
the model's validation split, the only images its refusal thresholds and
calibration were fitted on:

- the share refused (unusable image, "not a chest X-ray");
- the OOD score's distribution (two-sample Kolmogorov-Smirnov against validation):
  a shift there means "these images are not like the training images" even when
  few cross the refusal threshold;
- the predicted class mix against the training mix, and the class prevalences
  that explain it under label shift (BBSE, ``label_shift.py``);
- with labelled images: accuracy, sensitivity per class, what the runner does with
  each true class, and T and qhat refitted on the site (``sitecheck_refit.py``).

The reference numbers come from ``sitecheck_reference.py``, the go/no-go rules from
``device/site_rules.py`` (numpy only: the device's drift watch applies the same rules), the tables from ``sitecheck_report.py``.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecxr.device.decision import REFUSE, decide, in_force, reason_shares
from edgecxr.device.image_io import ImageError, is_image_file, load_gray
from edgecxr.device.ood import ood_scores, quality_problem
from edgecxr.device.preprocess import normalize, prepare_gray
from edgecxr.device.site_rules import ks_shift, score_spec
from edgecxr.errors import EdgecxrError


@dataclass
class SiteImages:
    """A site's readable images at the model's input size (uint8), with the runner's quality verdict
    on each decoded original (``""`` = passed) and, with ``--labels``, each one's class."""

    root: str
    files: list[str]  # relative to root
    gray: np.ndarray  # N x S x S uint8 after prepare_gray
    quality: list[str]
    labels: list[str] | None
    skipped: list[tuple[str, str]] = field(default_factory=list)


def site_files(folder: str, classes: tuple[str, ...], labelled: bool) -> list[tuple[str, str | None]]:
    """(file relative to ``folder``, class or None), sorted; with ``labelled`` the first path part is the class."""
    if not os.path.isdir(folder):
        raise EdgecxrError(f"{folder}: site folder not found; pass --data DIR with the site's images")
    found: list[tuple[str, str | None]] = []
    for dirpath, dirs, names in os.walk(folder, followlinks=True):  # a site folder of symlinks to class folders is common
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if is_image_file(name) and not name.startswith("."):
                rel = os.path.relpath(os.path.join(dirpath, name), folder).replace(os.sep, "/")
                found.append((rel, rel.split("/")[0] if labelled and "/" in rel else None))
    if not found:
        raise EdgecxrError(f"{folder}: no image files (.png, .jpg, .jpeg, .bmp, .dcm) in it or its subfolders")
    if labelled:
        subfolders = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))
        unknown = [d for d in subfolders if d not in classes]
        loose = [f for f, label in found if label is None]
        if unknown or loose or not subfolders:
            what = (f"subfolder(s) {unknown} are not among" if unknown else
                    f"{len(loose)} image(s) lie outside class subfolders, e.g. {loose[0]}; they must be in subfolders named after")
            raise EdgecxrError(f"{folder}: with --labels, {what} the model's classes {list(classes)}; "
                               "rename the folders (a subset of the classes is fine) or drop --labels")
    return found


def load_site(folder: str, contract: Any, labelled: bool, progress: bool = False) -> SiteImages:
    """Every image of a site folder, decoded once; unreadable files are skipped and counted, as the
    runner's ``--dir`` does."""
    site = decode_images(folder, site_files(folder, tuple(contract.classes), labelled), contract, progress, "site images")
    if not labelled:
        site.labels = None
    return site


def decode_images(root: str, items: list[tuple[str, str | None]], contract: Any, progress: bool = False,
                  desc: str = "images") -> SiteImages:
    """(file, class) pairs under ``root`` -> the model-size images and the runner's quality verdict on
    each decoded original (checked only where the contract carries a quality block, as on the device)."""
    from edgecxr.progress import progress as progress_bar

    block = contract.decision or {}
    files, labels, grays, quality, skipped = [], [], [], [], []
    for rel, label in progress_bar(items, desc=desc, unit="img", enabled=progress):
        try:
            raw = load_gray(os.path.join(root, rel))
        except ImageError as exc:
            skipped.append((rel, str(exc)))
            continue
        problem = quality_problem(raw, block["quality"]) if block.get("quality") else None
        files.append(rel)
        labels.append(label)
        quality.append(problem[0] if problem else "")
        grays.append(prepare_gray(raw, contract.preprocess))
    if not grays:
        raise EdgecxrError(f"{root}: none of the {len(skipped)} image files could be read (first: {skipped[0][1]})")
    return SiteImages(os.path.abspath(root), files, np.stack(grays), quality, labels, skipped)


def logits_of(backend: Any, gray: np.ndarray, spec: Any, batch: int = 64) -> np.ndarray:
    """float64 logits of uint8 model-size images, normalised a slice at a time (memory stays flat)."""
    from edgecxr.decide.report import model_logits

    out = [model_logits(backend, np.stack([normalize(g, spec) for g in gray[i : i + batch]]).astype(np.float32))
           for i in range(0, len(gray), batch)]
    return np.concatenate(out) if out else np.zeros((0, len(backend.contract.classes)))


# --- the measurements --------------------------------------------------------------------------
def verdicts(z: np.ndarray, quality: list[str], classes: tuple[str, ...], block: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What the runner says about each image: action (answer / refer / refuse), label, refusal kind."""
    out = []
    for logits, problem in zip(z, quality):
        if problem:
            out.append({"action": REFUSE, "label": None, "refusal": "quality", "reason_kind": "quality", "reason": problem})
            continue
        v = decide(logits, classes, block)
        out.append({"action": v.action, "label": v.label, "refusal": v.refusal.kind if v.refusal else None,
                    "reason_kind": v.reason_kind, "reason": v.reason, "set_size": len(v.prediction_set)})
    return out


def refusal_shares(acts: list[dict[str, Any]]) -> dict[str, float]:
    """Refused (unusable, not a CXR), referred (unfamiliar, uncertain) and answered shares."""
    s = reason_shares([a["reason_kind"] for a in acts])
    return {"quality": s["quality"], "ood": s["not_cxr"], "total": s["quality"] + s["not_cxr"],
            "unfamiliar": s["unfamiliar"], "uncertain": s["uncertain"], "refer": s["unfamiliar"] + s["uncertain"],
            "answer": s["answer"], "reasons": s}


def measure(backend: Any, site: SiteImages, ref: Any, n_boot: int = 1000) -> dict[str, Any]:
    """Every number the rules and the tables read, against ``ref`` (a ``sitecheck_reference.Reference``);
    ``logits`` and ``verdicts`` stay in it for the refit."""
    from edgecxr.site.label_shift import bbse

    contract = backend.contract
    classes = tuple(contract.classes)
    block = contract.decision
    z = logits_of(backend, site.gray, contract.preprocess)
    acts = verdicts(z, site.quality, classes, block)
    ran = np.array([q == "" for q in site.quality], dtype=bool)
    spec = score_spec(block)
    scores = ood_scores(z[ran], spec) if ran.any() else np.zeros(0)
    for a, score in zip((a for a, r in zip(acts, ran) if r), scores):
        a["ood_score"] = round(float(score), 4)
    out: dict[str, Any] = {
        "classes": list(classes), "n_images": len(site.files), "n_unreadable": len(site.skipped),
        "unreadable": [{"file": f, "reason": r} for f, r in site.skipped[:50]],
        "decision_in_force": _in_force_summary(block), "refused": refusal_shares(acts),
        "ood_score": {"method": spec.get("method"), "from_refusal_block": bool((block or {}).get("ood")),
                      "threshold": spec.get("threshold"), **ks_shift(scores, ref.ood_scores)},
        "train_mix": dict(zip(classes, ref.train_mix.tolist())), "train_counts": dict(ref.train_counts),
        "reference": ref.origin, "logits": z, "verdicts": acts,
    }
    if ran.any():
        out["label_shift"] = bbse(ref.y, ref.pred, z[ran].argmax(1), len(classes), n_boot=n_boot)
    if site.labels is not None:
        out["labelled"] = labelled_section(z, site, acts, classes, n_boot)
    return out


def _in_force_summary(block: dict[str, Any] | None) -> dict[str, Any]:
    b = in_force(block) or {}
    conf = b.get("conformal") or {}
    return {"temperature": b.get("temperature"), "qhat": conf.get("qhat"), "coverage": conf.get("coverage"),
            "ood_threshold": (b.get("ood") or {}).get("threshold"),
            "unfamiliar_threshold": (b.get("unfamiliar") or {}).get("threshold"),
            "site_block": ((block or {}).get("site") or {}).get("name") if b is not block else None}


def labelled_section(z: np.ndarray, site: SiteImages, acts: list[dict[str, Any]], classes: tuple[str, ...],
                     n_boot: int) -> dict[str, Any]:
    """Accuracy and sensitivity per class with bootstrap CIs (``metrics.classification_report``, on every
    image the model ran on, as ``edgecxr eval``), and what the runner does with each true class."""
    from edgecxr.device.decision import calibrated_probabilities
    from edgecxr.eval.metrics import bootstrap_ci, classification_report

    y = np.array([classes.index(c) for c in site.labels or []], dtype=int)
    probs = calibrated_probabilities(z, None)
    rep = classification_report(y, probs, list(classes), n_boot=n_boot)
    per_class = {}
    for i, c in enumerate(classes):
        mine = y == i
        if not mine.any():
            continue
        rows = [a for a, m in zip(acts, mine) if m]
        n = len(rows)
        called = {k: sum(a["action"] == "answer" and a["label"] == k for a in rows) / n for k in classes}
        # resampled within the class: a resample of all images that drew none of a small class would count its
        # sensitivity as 0 and stretch the interval down to 0
        lo, hi = bootstrap_ci(y[mine], probs[mine], len(classes), n_boot)["sensitivity"] if n_boot else ([np.nan] * len(classes),) * 2
        sens = {"value": rep["per_class"][c]["sensitivity"]["value"], "ci95": [float(lo[i]), float(hi[i])]}
        shares = reason_shares([a["reason_kind"] for a in rows])
        per_class[c] = {"n": n, "sensitivity": sens, "called": called, "refer": shares["uncertain"] + shares["unfamiliar"],
                        "refused_quality": shares["quality"], "refused_ood": shares["not_cxr"], "reasons": shares}
    counts = Counter(site.labels or [])
    return {"n": len(y), "accuracy": rep["accuracy"], "accuracy_ci95": rep["accuracy_ci95"], "per_class": per_class,
            "class_mix": {c: counts[c] / len(y) for c in classes}, "y": y}
