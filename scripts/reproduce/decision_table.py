#!/usr/bin/env python3
"""What the device says, and why, for each model file: the shares of every reason where a user meets them.

Every image goes through the runner's own steps (decode, the contract's quality checks,
the model, ``device/decision.py``'s ``decide``): answered, referred as uncertain, referred
as unfamiliar, refused as not a chest X-ray, refused as unusable. Reported for the model's
test split (overall and per class, with accuracy when answered and conformal coverage per
class with 95% CIs), for each ``--near`` folder of real chest X-rays (another disease,
another hospital, simulated sites: per class where its subfolders are the model's classes)
and for each group of the non-CXR set (``scripts/reproduce/build_ood_set.py``)::

    python scripts/reproduce/decision_table.py --ood-set runs/ood_set \\
        --near TB=../shared/data/tbcxr/Tuberculosis --near shenzhen=../shared/data/nlm-shenzhen \\
        --model runs/mnv2/best.pt --model runs/mnv2/export/mobilenet_v2_int8.tflite \\
        --out runs/mnv2/decision_table.json --markdown runs/mnv2/decision_table.md

``--docs FILE`` replaces the text between ``<!-- decision-table -->`` and
``<!-- /decision-table -->`` in FILE with the tables (docs/results/decision.md, and the
summary table in README.md with ``--summary FILE``). Names the CPU and its integer features.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np
from ood_eval import Images, folder_files, logits_of, ood_set_files, test_cxr_files

from edgecxr.device.atomic import write_json, write_text
from edgecxr.device.cpufeatures import cpu_description
from edgecxr.device.decision import REASON_KINDS, decide, reason_shares
from edgecxr.errors import EdgecxrError

SHOWN = ("answer", "uncertain", "unfamiliar", "not_cxr", "quality")
LABELS = {"answer": "answered", "uncertain": "refer: uncertain", "unfamiliar": "refer: unfamiliar", "not_cxr": "refused: not a CXR",
          "quality": "refused: unusable"}


def verdict_kinds(z: np.ndarray, quality: np.ndarray, classes: tuple[str, ...], block: dict[str, Any]) -> tuple[list[str], list[str | None]]:
    """(reason kind, answered label or None) per image, exactly as the runner decides."""
    kinds, labels = [], []
    for logits, problem in zip(z, quality):
        if problem:
            kinds.append("quality")
            labels.append(None)
            continue
        v = decide(logits, classes, block)
        kinds.append(v.reason_kind)
        labels.append(v.label)
    return kinds, labels


def _class_of(path: str, root_by_group: dict[str, str], group: str, classes: tuple[str, ...]) -> str | None:
    root = root_by_group.get(group)
    if not root:
        return None
    first = os.path.relpath(path, root).split(os.sep)[0]
    return first if first in classes else None


def _group_rows(kinds: list[str], labels: list[str | None], truth: list[str | None], groups: np.ndarray,
                classes: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for g in dict.fromkeys(groups.tolist()):
        idx = np.flatnonzero(groups == g)
        row: dict[str, Any] = {"n": int(len(idx)), **reason_shares([kinds[i] for i in idx])}
        per = {c: [i for i in idx if truth[i] == c] for c in classes}
        if any(per.values()):
            row["per_class"] = {c: {"n": len(ii), **reason_shares([kinds[i] for i in ii])} for c, ii in per.items() if ii}
            answered = [i for i in idx if labels[i] is not None and truth[i] is not None]
            row["answered_accuracy"] = float(np.mean([labels[i] == truth[i] for i in answered])) if answered else None
        out[g] = row
    return out


def coverage(z: np.ndarray, y: np.ndarray, classes: tuple[str, ...], block: dict[str, Any]) -> dict[str, Any] | None:
    from edgecxr.decide.fit import coverage_report
    from edgecxr.device.decision import calibrated_probabilities, in_force

    force = in_force(block) or {}
    if not force.get("conformal"):
        return None
    rep = coverage_report(calibrated_probabilities(z, force), y, list(classes), force["conformal"])
    return {"overall": rep["coverage"], "ci95": rep["coverage_ci95"], "per_class": {
        c: {"coverage": v["coverage"], "ci95": v["coverage_ci95"], "n": v["n"]} for c, v in rep["per_class"].items()},
        "per_class_thresholds": bool(force["conformal"].get("qhat_per_class"))}


def evaluate(path: str, near: list[tuple[str, str]], roots: dict[str, str], ood_items: list[tuple[str, str]],
             threads: int | None, cache: dict[str, Images]) -> dict[str, Any]:
    from edgecxr.models.runtime import open_model

    backend = open_model(path, threads)
    contract = backend.contract
    block = contract.decision or {}
    if not block.get("ood"):
        raise EdgecxrError(f"{path}: no decision.ood block; run `edgecxr calibrate` on its checkpoint and convert again")
    classes = tuple(contract.classes)
    test_items, labels = test_cxr_files(contract)
    key = repr((contract.preprocess.to_dict(), block.get("quality")))
    if key not in cache:
        cache[key] = Images(test_items + near + ood_items, contract.preprocess, block.get("quality"))
        cache[key].labels = labels
    images = cache[key]
    z = logits_of(backend, images)
    kinds, answered = verdict_kinds(z, images.quality_arr, classes, block)
    truth = [classes[images.labels[f]] if f in images.labels else _class_of(f, roots, g, classes)
             for f, g in zip(images.files, images.groups)]
    test = images.groups_arr == "test_cxr"
    y = np.array([images.labels[f] for f, t in zip(images.files, test) if t])
    return {"model": path, "format": contract.format, "precision": contract.precision, "runtime": backend.runtime,
            "arch": contract.arch, "ood": {k: block["ood"].get(k) for k in ("method", "threshold", "rule")},
            "unfamiliar": {k: (block.get("unfamiliar") or {}).get(k) for k in ("method", "threshold", "tpr")},
            "groups": _group_rows(kinds, answered, truth, images.groups_arr, classes),
            "coverage": coverage(z[test], y, classes, block)}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        name = f"{os.path.basename(r['model'])} ({r['runtime']})"
        lines += ["", f"**{name}**: not a CXR above {r['ood']['threshold']:.3g} ({r['ood'].get('rule') or 'one cut'}), "
                      f"unfamiliar above {_g(r['unfamiliar'].get('threshold'))}", "",
                  "| images | n | " + " | ".join(LABELS[k] for k in SHOWN) + " | accuracy when answered |",
                  "|---|---|" + "---|" * (len(SHOWN) + 1)]
        for g, row in r["groups"].items():
            acc = row.get("answered_accuracy")
            lines.append(f"| {g} | {row['n']} | " + " | ".join(_pct(row[k]) for k in SHOWN) + f" | {'-' if acc is None else f'{acc:.3f}'} |")
            for c, pc in (row.get("per_class") or {}).items():
                lines.append(f"| &nbsp;&nbsp;{g} {c} | {pc['n']} | " + " | ".join(_pct(pc[k]) for k in SHOWN) + " | |")
        cov = r["coverage"]
        if cov:
            per = ", ".join(f"{c} {v['coverage']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]" for c, v in cov["per_class"].items())
            kind = "per-class (Mondrian) thresholds" if cov["per_class_thresholds"] else "one threshold"
            lines += ["", f"Conformal coverage on the test split ({kind}): {cov['overall']:.3f} [{cov['ci95'][0]:.3f}, "
                          f"{cov['ci95'][1]:.3f}]; per class {per}."]
    return "\n".join(lines).strip() + "\n"


def _g(x: float | None) -> str:
    return "-" if x is None else f"{float(x):.3g}"


def summary(results: list[dict[str, Any]]) -> str:
    """One row per file: the goals' numbers."""
    head = ["file", "test answered (accuracy)", "test refused as not a CXR, worst class", "coverage, worst class",
            "TB refer / refused", "other-hospital normals answered / refer / refused", "non-CXR refused, worst group",
            "non-CXR answered, worst group"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        g = r["groups"]
        test = g.get("test_cxr", {})
        worst_refused = max((pc["not_cxr"] for pc in (test.get("per_class") or {}).values()), default=None)
        cov = r["coverage"] or {}
        worst_cov = min((v["coverage"] for v in (cov.get("per_class") or {}).values()), default=None)
        tb = next((v for k, v in g.items() if k.lower().startswith("tb")), None)
        other = next((v for k, v in g.items() if "shenzhen" in k.lower()), None)
        non = [v for k, v in g.items() if k in ("photos", "documents", "synthetic", "medical_other")]
        cells = [f"{os.path.basename(r['model'])}", f"{_pct(test.get('answer'))} ({_g(test.get('answered_accuracy'))})",
                 _pct(worst_refused), _g(worst_cov),
                 f"{_pct(tb['uncertain'] + tb['unfamiliar'])} / {_pct(tb['not_cxr'])}" if tb else "-",
                 f"{_pct(other['answer'])} / {_pct(other['uncertain'] + other['unfamiliar'])} / {_pct(other['not_cxr'])}" if other else "-",
                 _pct(min(v["not_cxr"] + v["quality"] for v in non)) if non else "-",
                 _pct(max(v["answer"] for v in non)) if non else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def replace_between(path: str, body: str, tag: str) -> None:
    text = open(path, encoding="utf-8").read()
    begin, end = f"<!-- {tag} -->", f"<!-- /{tag} -->"
    if begin not in text or end not in text:
        raise EdgecxrError(f"{path}: no {begin} ... {end} markers to replace between")
    head, rest = text.split(begin, 1)
    write_text(path, head + begin + "\n" + body + rest[rest.index(end):])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="a model file with a decision block (repeatable)")
    p.add_argument("--ood-set", default="runs/ood_set", help="folder built by scripts/reproduce/build_ood_set.py")
    p.add_argument("--near", action="append", default=[], metavar="NAME=DIR", help="real CXRs the model never saw (repeatable)")
    p.add_argument("--out", required=True, help="JSON with every number")
    p.add_argument("--markdown", help="write the tables here too")
    p.add_argument("--docs", help="replace the decision-table section of this Markdown file")
    p.add_argument("--docs-tag", default="decision-table",
                   help="the section --docs replaces: between <!-- TAG --> and <!-- /TAG --> (one per set of models)")
    p.add_argument("--summary", help="replace the decision-summary section of this Markdown file (README.md)")
    p.add_argument("--threads", type=int, help="runtime threads")
    a = p.parse_args(argv)
    try:
        near, roots = [], {}
        for spec in a.near:
            name, _, folder = spec.partition("=")
            near += folder_files(folder, name)
            roots[name] = folder
        ood_items = ood_set_files(a.ood_set)
        cache: dict[str, Images] = {}
        results = [evaluate(m, near, roots, ood_items, a.threads, cache) for m in a.model]
    except EdgecxrError as exc:
        print(f"decision_table: error: {exc}", file=sys.stderr)
        return 2
    cpu = cpu_description()
    body = markdown(results) + f"\nCPU: {cpu}. Command: `python scripts/reproduce/decision_table.py {' '.join(argv or sys.argv[1:])}`\n"
    write_json(a.out, {"cpu": cpu, "reason_kinds": list(REASON_KINDS), "results": results})
    for path, text, tag in ((a.markdown, body, None), (a.docs, body, a.docs_tag), (a.summary, summary(results), "decision-summary")):
        if path and tag:
            replace_between(path, text, tag)
        elif path:
            write_text(path, text)
    print(body)
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
