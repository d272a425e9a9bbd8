"""``edgecxr sitecheck``'s output: an aligned terminal table, ``sitecheck.md`` and ``sitecheck.json``.

One list of rows per section feeds both the terminal and the Markdown, so they
cannot disagree; the JSON holds every number plus one row per image (file, true
class, what the runner does with it), for a clinic to look at the images behind a
NO-GO.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgecxr.device.site_rules import fmt_p


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}%"


def _ci(value: float, ci: list[float], digits: int = 2) -> str:
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def sections(m: dict[str, Any], refitted: dict[str, Any] | None) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every table."""
    r, ks = m["refused"], m["ood_score"]
    score = ks["method"] + ("" if ks["from_refusal_block"] else ", no OOD refusal in this model: logit-only stand-in")
    out = [("Refusals and OOD score", ["", "site", "validation"], [
        ["refused: unusable image", _pct(r["quality"]), ""],
        ["refused: not a chest X-ray", _pct(r["ood"]), ""],
        ["refused, total", _pct(r["total"]), ""],
        ["refer: unfamiliar image", _pct(r.get("unfamiliar")), ""],
        ["refer: uncertain (set not one class)", _pct(r.get("uncertain", r["refer"])), ""],
        ["answered", _pct(r.get("answer")), ""],
        [f"OOD score median ({score})", f"{ks.get('site_median', float('nan')):.3g}", f"{ks.get('reference_median', float('nan')):.3g}"],
        ["OOD score shift: KS D, p", f"{ks['d']:.3f}", fmt_p(ks["p"]) if ks["p"] == ks["p"] else "-"],
    ])]
    ls = m.get("label_shift")
    if ls:
        rows = []
        for c, name in enumerate(m["classes"]):
            ci = ls.get("ci95", [[float("nan")] * 2] * len(m["classes"]))[c]
            rows.append([name, _pct(ls["predicted_share"][c]), _pct(m["train_mix"][name]), _ci(ls["prevalence"][c], ci, 3)])
        out.append((f"Class mix ({ls['n_site']} images the model ran on; BBSE from {ls['n_validation']} validation images)",
                    ["class", "called", "training", "BBSE prevalence [95% CI]"], rows))
    lab = m.get("labelled")
    if lab:
        head = ["true class", "n", "sensitivity [95% CI]"] + [f"called {c}" for c in m["classes"]] + ["refer", "refused"]
        rows = []
        for name, c in lab["per_class"].items():
            s = c["sensitivity"]
            rows.append([name, str(c["n"]), _ci(s["value"], s["ci95"])] + [_pct(c["called"][k]) for k in m["classes"]]
                        + [_pct(c["refer"]), _pct(c["refused_quality"] + c["refused_ood"])])
        out.append((f"Labelled images: accuracy {_ci(lab['accuracy'], lab['accuracy_ci95'], 3)} on {lab['n']}", head, rows))
    if refitted:
        rows = [["temperature T", _num(refitted.get("model_temperature")),
                 _num(refitted.get("temperature")) if refitted.get("temperature") else refitted.get("temperature_kept", "-")]]
        conf = refitted.get("conformal")
        rows.append(["conformal qhat", _num(refitted.get("model_qhat")), _num(conf["qhat"]) if conf else f"not refitted: {refitted.get('why')}"])
        for key, what in (("unfamiliar", "unfamiliar-image cut (refer above)"), ("ood", "not-a-CXR cut (refuse above)")):
            if refitted.get(key):
                rows.append([what, _num(refitted[key]["model_threshold"]), _num(refitted[key]["threshold"])
                             + (" (the device keeps the model's: never lowered)" if key == "ood" and
                                refitted[key]["threshold"] < refitted[key]["model_threshold"] else "")])
        if "model_coverage_on_site" in refitted:
            rows.append(["coverage on these images", _pct(refitted["model_coverage_on_site"]), _pct(conf["coverage"]) + " (target)" if conf else "-"])
        out.append((f"Refit on the {refitted['n']} labelled images the runner does not refuse", ["", "model", "site"], rows))
    return out


def _num(x: Any) -> str:
    return "-" if x is None else f"{float(x):.4g}"


def _aligned(cells: list[str], widths: list[int]) -> str:
    """First column left-aligned, numbers right-aligned."""
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()


def text(m: dict[str, Any], refitted: dict[str, Any] | None, judgement: dict[str, Any], header: list[str]) -> str:
    lines = list(header)
    for title, head, rows in sections(m, refitted):
        widths = [max(len(x) for x in col) for col in zip(head, *rows)]
        lines += ["", title, _aligned(head, widths), "  ".join("-" * w for w in widths)] + [_aligned(r, widths) for r in rows]
    return "\n".join(lines + ["", judgement["line"]])  # warnings ride in the line (site_rules.judge)


def markdown(m: dict[str, Any], refitted: dict[str, Any] | None, judgement: dict[str, Any], header: list[str]) -> str:
    lines = ["# Site check", ""] + [f"- {h}" for h in header]
    for title, head, rows in sections(m, refitted):
        lines += ["", f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "## Verdict", "", f"**{judgement['line']}**", "", "Rules: " + ", ".join(f"`{k}` {v}" for k, v in judgement["rules"].items())]
    return "\n".join(lines) + "\n"


def json_report(m: dict[str, Any], refitted: dict[str, Any] | None, judgement: dict[str, Any], site: Any,
                context: dict[str, Any]) -> dict[str, Any]:
    """Every number, without the arrays kept for the refit; one row per image."""
    body = {k: v for k, v in m.items() if k not in ("logits", "verdicts")}
    if "labelled" in body:
        body["labelled"] = {k: v for k, v in body["labelled"].items() if k != "y"}
    labels = site.labels or [None] * len(site.files)
    images = [{"file": f, "class": t, **{k: v for k, v in a.items() if v is not None}}
              for f, t, a in zip(site.files, labels, m["verdicts"])]
    return {**context, "verdict": judgement["verdict"], "line": judgement["line"], "reasons": judgement["reasons"],
            "rules": judgement["rules"], **body, "refit": refitted, "images": images}


def as_jsonable(obj: Any) -> Any:
    """numpy scalars and arrays to plain JSON values (for ``--json`` on stdout)."""
    if isinstance(obj, dict):
        return {k: as_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
