"""A site's own temperature, conformal threshold and OOD cuts, and the ``site`` block that carries them.

Refitted on the site's labelled images that reach the conformal step on the device
(not refused), with the very functions ``edgecxr calibrate`` uses on the validation
split (``decision_fit.fit_temperature``, ``fit_conformal``), at the model's own
coverage and score. A temperature the site's images cannot identify (no
misclassified image) or that lands on its search bound is not taken: the model's T
stays and qhat is refitted under it.

With ``--stamp`` the block goes into the model file's decision block as ``site``
(``device/decision.py`` applies its T and qhat on the device), with provenance: the
folder, the sha256 of its sorted file list, images per class, date, tool version and
the verdict. Written atomically through ``decision_store.write_decision``.
"""
from __future__ import annotations

import hashlib
import math
import os
from datetime import datetime, timezone
from typing import Any

import numpy as np

SITE_SCHEMA = "edgecxr.site/1"


def refit(m: dict[str, Any], block: dict[str, Any] | None, coverage: float | None = None) -> dict[str, Any]:
    """T and qhat on the labelled site images the runner does not refuse, beside what the model's own
    numbers cover on them; ``coverage`` defaults to the model's. ``conformal`` is None (with ``why``)
    when too few images."""
    from edgecxr.decide.fit import DEFAULT_COVERAGE, DEFAULT_METHOD, coverage_report, fit_conformal, fit_temperature
    from edgecxr.device.decision import calibrated_probabilities

    block = {k: v for k, v in (block or {}).items() if k != "site"}  # the model's own numbers, not an earlier site's
    lab = m["labelled"]
    keep = np.array([a["action"] != "refuse" for a in m["verdicts"]], dtype=bool)
    z, y = m["logits"][keep], lab["y"][keep]
    out: dict[str, Any] = {"n": int(keep.sum()), "classes_seen": sorted({m["classes"][i] for i in y.tolist()}),
                           "model_temperature": block.get("temperature"), "model_qhat": (block.get("conformal") or {}).get("qhat")}
    if len(y) < 2:
        return {**out, "temperature": None, "conformal": None,
                "why": f"only {len(y)} labelled image(s) reach the conformal step (the others are refused)"}
    t_fit = fit_temperature(z, y)
    out["calibration"] = t_fit
    kept = "no misclassified site image" if t_fit.get("not_identifiable") else "at the search bound" if t_fit["at_bound"] else None
    out["temperature"] = None if kept else t_fit["temperature"]
    if kept:
        out["temperature_kept"] = f"the model's T kept ({kept})"
    t = out["temperature"] or block.get("temperature", 1.0)
    own = block.get("conformal") or {}
    coverage = float(coverage or own.get("coverage", DEFAULT_COVERAGE))
    method = str(own.get("method", DEFAULT_METHOD))
    if own:
        out["model_coverage_on_site"] = coverage_report(calibrated_probabilities(z, block), y, m["classes"], own)["coverage"]
    if math.ceil((len(y) + 1) * coverage) > len(y):  # fit_conformal's own check, in sitecheck's words
        out["conformal"] = None
        out["why"] = (f"{len(y)} labelled images reach the conformal step, too few to certify coverage {coverage:g} "
                      f"(needs {math.ceil(coverage / (1 - coverage))}); add labelled images or pass a lower --coverage")
        return out
    out["conformal"] = fit_conformal(calibrated_probabilities(z, {"temperature": t}), y, coverage, method)
    out.update(refit_cuts(m, block))
    return out


def refit_cuts(m: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    """The two OOD cuts on the site's own labelled radiographs (every image the quality checks pass),
    by the rule the model's were fitted with (``ood_cuts.fit_cuts``): the site's CXRs are, by their
    labels, chest X-rays and familiar there. The device never lowers the not-a-CXR cut below the
    model's (``decision.in_force``); a model fitted with one cut (no ``unfamiliar`` block) gets none."""
    from edgecxr.decide.ood_cuts import DEFAULT_TPR, fit_cuts
    from edgecxr.errors import EdgecxrError

    own, unfamiliar = block.get("ood") or {}, block.get("unfamiliar") or {}
    if not unfamiliar or "margin" not in own:
        return {}
    ran = np.array([a["reason_kind"] != "quality" for a in m["verdicts"]], dtype=bool)
    try:
        cuts = fit_cuts({**own}, m["logits"][ran], float(unfamiliar.get("tpr", DEFAULT_TPR)), float(own["margin"]))
    except EdgecxrError as exc:
        return {"cuts_why": str(exc)}
    return {"ood": {"threshold": cuts["ood"]["threshold"], "model_threshold": float(own["threshold"])},
            "unfamiliar": {"threshold": cuts["unfamiliar"]["threshold"], "model_threshold": float(unfamiliar["threshold"]),
                           "tpr": cuts["unfamiliar"]["tpr"], "n": cuts["unfamiliar"]["n_threshold"]}}


def files_sha256(files: list[str]) -> str:
    """sha256 of the sorted relative paths, one per line: names which images were checked."""
    return hashlib.sha256("\n".join(sorted(files)).encode("utf-8")).hexdigest()


def site_block(site: Any, m: dict[str, Any], refitted: dict[str, Any], judgement: dict[str, Any]) -> dict[str, Any]:
    """The contract's ``decision.site`` entry: numbers the device applies, and where they come from."""
    from edgecxr.versions import tool_versions

    counts = {c: n for c in m["classes"] if (n := sum(1 for label in site.labels or [] if label == c))}
    out: dict[str, Any] = {
        "schema": SITE_SCHEMA, "name": os.path.basename(os.path.normpath(site.root)), "folder": site.root,
        "files_sha256": files_sha256(site.files + [f for f, _r in site.skipped]), "n_images": len(site.files),
        "n_unreadable": len(site.skipped), "n_per_class": counts,
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "tool": f"edgecxr {tool_versions(('edgecxr',)).get('edgecxr', '?')}",
        "verdict": judgement["verdict"], "reasons": judgement["reasons"], "rules": judgement["rules"],
        "fitted_on": f"{refitted['n']} labelled images not refused ({', '.join(refitted['classes_seen'])})",
        "replaces": {"temperature": refitted["model_temperature"], "qhat": refitted["model_qhat"]},
    }
    if refitted.get("temperature"):
        out["temperature"] = float(refitted["temperature"])
    if refitted.get("conformal"):
        conf = refitted["conformal"]
        out["conformal"] = {"method": conf["method"], "coverage": conf["coverage"], "qhat": conf["qhat"], "n": conf["n"]}
    for key in ("ood", "unfamiliar"):  # the two OOD cuts, refitted on the site's own radiographs
        if refitted.get(key):
            out[key] = {"threshold": float(refitted[key]["threshold"])}
    return out


def stamp(path: str, site: dict[str, Any], reference: dict[str, Any] | None) -> None:
    """Write ``site`` (and the compact validation reference) into the model file's decision block."""
    from edgecxr.decide.store import read_contract, write_decision
    from edgecxr.device.decision import SCHEMA

    block = dict(read_contract(path).decision or {})
    block.setdefault("schema", SCHEMA)
    block["site"] = site
    if reference is not None:
        block["reference"] = reference
    write_decision(path, block)
