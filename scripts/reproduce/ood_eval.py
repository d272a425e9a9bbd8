#!/usr/bin/env python3
"""How well each model file refuses what is not a chest X-ray, as the device does it.

For every ``--model`` (checkpoint, ONNX, TFLite, any format the toolkit opens) the
images go through the runner's own steps: decode to grey (``load_gray``), the
contract's quality checks, the model, and its OOD score and threshold
(``device/ood.py``). Reported per group of the OOD set (built by
``scripts/reproduce/build_ood_set.py``), for the model's test CXRs and for a near
in-distribution folder (``--near``: chest X-rays of another disease, never tuned to):

- ``auroc``: how well the OOD score alone ranks the group above the test CXRs;
- ``fpr_at_95tpr``: share of the group the score accepts at the threshold that keeps
  95% of these test CXRs (the usual OOD metric, threshold taken on test);
- ``refused``: share refused end to end with the contract's own numbers (quality
  checks, then the OOD threshold fitted on validation images), split by reason.

    python scripts/reproduce/ood_eval.py --ood-set runs/ood_set --near ../shared/data/tbcxr \\
        --model runs/mnv2/export/mobilenet_v2_fp32.onnx --model runs/mnv2/export/mobilenet_v2_int8.tflite \\
        --out runs/mnv2/export/ood_report.json

Writes JSON (read by the model card) and prints a Markdown table. The CPU and its
integer features are named in both.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import pickle
import sys
import time
from typing import Any

import numpy as np

from edgecxr.decide.ood_fit import auroc, fpr_at_tpr
from edgecxr.decide.report import model_logits
from edgecxr.device.atomic import atomic_path, write_json
from edgecxr.device.cpufeatures import cpu_description
from edgecxr.device.image_io import ImageError, load_gray
from edgecxr.device.ood import ood_scores, ood_threshold, quality_problem
from edgecxr.device.preprocess import PreprocessSpec, normalize, prepare_gray
from edgecxr.errors import EdgecxrError

TPR = 0.95


def ood_set_files(root: str) -> list[tuple[str, str]]:
    """(path, group) from the set's MANIFEST.csv."""
    manifest = os.path.join(root, "MANIFEST.csv")
    if not os.path.exists(manifest):
        raise EdgecxrError(f"{root}: no MANIFEST.csv; build the set with scripts/reproduce/build_ood_set.py --out {root}")
    with open(manifest, encoding="utf-8") as fh:
        return [(os.path.join(root, r["file"]), r["group"]) for r in csv.DictReader(fh)]


def folder_files(root: str, group: str) -> list[tuple[str, str]]:
    from edgecxr.device.image_io import is_image_file

    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        out += [(os.path.join(dirpath, f), group) for f in sorted(files) if is_image_file(f)]
    return out


def test_cxr_files(contract: Any) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """The model's test split and each file's class index (for accuracy among the answered)."""
    from edgecxr.eval.evaluate import resolve_samples

    index = resolve_samples(contract, None, "test", progress=False)
    files = [(os.path.join(index.root, s.file), "test_cxr") for s in index.of_split("test")]
    return files, {os.path.join(index.root, s.file): list(contract.classes).index(s.label) for s in index.of_split("test")}


class Images:
    """Decoded once per preprocessing: the quality verdict on the raw grey image, and the
    uint8 model-size image (normalised on demand, like ``imageset.LabelledImages``)."""

    def __init__(self, items: list[tuple[str, str]], spec: PreprocessSpec, quality: dict[str, Any] | None) -> None:
        self.spec, self.files, self.groups, self.quality, grays = spec, [], [], [], []
        for path, group in items:
            try:
                gray = load_gray(path)
            except ImageError as exc:
                print(f"skipped {exc}", file=sys.stderr)
                continue
            problem = quality_problem(gray, quality) if quality is not None else None
            self.files.append(path)
            self.groups.append(group)
            self.quality.append(problem[0] if problem else "")
            grays.append(prepare_gray(gray, spec))
        self.gray = np.stack(grays)
        self.groups_arr = np.array(self.groups)
        self.quality_arr = np.array(self.quality)
        self.labels: dict[str, int] = {}

    def x(self, idx: np.ndarray) -> np.ndarray:
        return np.stack([normalize(g, self.spec) for g in self.gray[idx]]).astype(np.float32)


def logits_of(backend: Any, images: Images, batch: int = 64) -> np.ndarray:
    out = []
    for i in range(0, len(images.files), batch):
        idx = np.arange(i, min(i + batch, len(images.files)))
        out.append(model_logits(backend, images.x(idx), batch_size=32))
    return np.concatenate(out)


def group_report(scores: np.ndarray, t: float, images: Images, group: str, test_scores: np.ndarray) -> dict[str, Any]:
    m = images.groups_arr == group
    s, q = scores[m], images.quality_arr[m]
    by_quality = q != ""
    by_ood = ~by_quality & (s > t)
    reasons: dict[str, int] = {}
    for r in q[by_quality]:
        reasons[str(r)] = reasons.get(str(r), 0) + 1
    out = {"n": int(m.sum()), "refused": float(np.mean(by_quality | by_ood)), "refused_by_quality": float(np.mean(by_quality)),
           "refused_by_ood": float(np.mean(by_ood)), "ood_score_refused": float(np.mean(s > t)), "quality_reasons": reasons,
           "score_median": float(np.median(s))}
    if group != "test_cxr":
        out["auroc"] = auroc(test_scores, s)
        out["fpr_at_95tpr"] = fpr_at_tpr(test_scores, s, TPR)
    return out


def evaluate_model(path: str, cache: dict[str, Images], ood_items: list[tuple[str, str]], near: list[tuple[str, str]],
                   threads: int | None, cache_dir: str | None = None) -> dict[str, Any]:
    """One model file through the runner's steps; decoded images are shared by every model with
    the same preprocessing and quality numbers (and kept in ``cache_dir`` between runs, if given)."""
    from edgecxr.models.runtime import open_model

    backend = open_model(path, threads)
    contract = backend.contract
    block = contract.decision or {}
    if not block.get("ood"):
        raise EdgecxrError(f"{path}: its contract has no decision.ood block; run `edgecxr calibrate` on it (or its checkpoint) first")
    test_items, labels = test_cxr_files(contract)
    items = test_items + near + ood_items
    key = hashlib.sha256(json.dumps([contract.preprocess.to_dict(), block.get("quality"), items]).encode()).hexdigest()[:16]
    if key not in cache:
        disk = os.path.join(cache_dir, f"ood_eval_images_{key}.pkl") if cache_dir else None
        if disk and os.path.exists(disk):
            with open(disk, "rb") as fh:
                cache[key] = pickle.load(fh)
        else:
            cache[key] = Images(items, contract.preprocess, block.get("quality"))
            cache[key].labels = labels
            if disk:
                with atomic_path(disk) as tmp, open(tmp, "wb") as fh:
                    pickle.dump(cache[key], fh)
    images = cache[key]
    t0 = time.perf_counter()
    z = logits_of(backend, images)
    seconds = time.perf_counter() - t0
    scores = ood_scores(z, block["ood"])
    t = ood_threshold(block["ood"])
    test_scores = scores[images.groups_arr == "test_cxr"]
    groups = [g for g in dict.fromkeys(images.groups) if g != "test_cxr"]
    test = images.groups_arr == "test_cxr"
    y = np.array([images.labels[f] for f, is_test in zip(images.files, test) if is_test])
    kept = scores[test] <= t
    accuracy = {"all": float(np.mean(z[test].argmax(1) == y)), "not_refused": float(np.mean(z[test][kept].argmax(1) == y[kept])),
                "refused": float(np.mean(z[test][~kept].argmax(1) == y[~kept])) if (~kept).any() else None}
    return {"model": path, "format": contract.format, "precision": contract.precision, "runtime": backend.runtime,
            "arch": contract.arch, "method": block["ood"].get("method"), "threshold": t, "fitted_tpr": block["ood"].get("tpr"),
            "fitted_with": block["ood"].get("fitted_with"), "inference_seconds": round(seconds, 1),
            "test_cxr": {**group_report(scores, t, images, "test_cxr", test_scores), "accuracy": accuracy},
            "groups": {g: group_report(scores, t, images, g, test_scores) for g in groups}}


def markdown(results: list[dict[str, Any]]) -> str:
    groups = list(dict.fromkeys(g for r in results for g in r["groups"]))
    head = ("| model | test CXRs refused (accuracy kept / refused) | "
            + " | ".join(f"{g}: AUROC / FPR@95 / refused" for g in groups) + " |")
    lines = [head, "|" + "---|" * (2 + len(groups))]
    for r in results:
        tc, acc = r["test_cxr"], r["test_cxr"]["accuracy"]
        refused_acc = "-" if acc["refused"] is None else f"{acc['refused']:.3f}"
        cells = [f"{os.path.basename(r['model'])} ({r['runtime']})",
                 f"{tc['refused']:.3f} ({acc['not_refused']:.3f} / {refused_acc})"]
        for g in groups:
            x = r["groups"].get(g)
            cells.append("-" if x is None else f"{x['auroc']:.4f} / {x['fpr_at_95tpr']:.3f} / {x['refused']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="a model file with a fitted decision.ood block (repeatable)")
    p.add_argument("--ood-set", default="runs/ood_set", help="folder built by scripts/reproduce/build_ood_set.py")
    p.add_argument("--near", action="append", default=[], metavar="[NAME=]DIR",
                   help="a folder of near in-distribution images (e.g. tbcxr=../shared/data/tbcxr), reported as its own group")
    p.add_argument("--out", required=True, help="where to write the JSON (e.g. EXPORT_DIR/ood_report.json)")
    p.add_argument("--threads", type=int, help="runtime threads")
    p.add_argument("--cache-dir", help="keep the decoded, preprocessed images here between runs (a pickle per preprocessing)")
    a = p.parse_args(argv)
    try:
        near: list[tuple[str, str]] = []
        for spec in a.near:
            name, _, folder = spec.rpartition("=")
            near += folder_files(folder, name or os.path.basename(os.path.normpath(folder)))
        ood_items = ood_set_files(a.ood_set)
        cache: dict[str, Images] = {}
        results = []
        for path in a.model:
            results.append(evaluate_model(path, cache, ood_items, near, a.threads, a.cache_dir))
            r = results[-1]
            print(f"{os.path.basename(path)}: test CXRs refused {r['test_cxr']['refused']:.3f}; "
                  + ", ".join(f"{g} AUROC {x['auroc']:.4f} refused {x['refused']:.3f}" for g, x in r["groups"].items()), file=sys.stderr)
    except EdgecxrError as exc:
        print(f"ood_eval: error: {exc}", file=sys.stderr)
        return 2
    report = {"cpu": cpu_description(), "tpr": TPR, "ood_set": a.ood_set, "near": a.near, "results": results}
    write_json(a.out, report)
    print(markdown(results))
    print(f"\nCPU: {report['cpu']}; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
