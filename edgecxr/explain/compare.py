"""How far an explanation moves when a model is quantized (``edgecxr explain --compare``).

For each image both models explain the same class (the FP32 model's prediction), with
the same method; for LIME also the same superpixels and the same perturbed images
(same seed), so the only difference left is the model. Two numbers per image:

- Spearman rank correlation of the two maps, pixel by pixel (ties get average ranks;
  undefined, and left out of the mean, when a map is constant);
- IoU of the two "top regions": the pixels at or above each map's 80th percentile
  (``--top 0.2``), i.e. the 20% that each explanation calls most important.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict

import numpy as np

from edgecxr.device.image_io import ImageError, is_image_file, load_gray
from edgecxr.errors import EdgecxrError
from edgecxr.explain.api import Explanation, LimeOptions, explain
from edgecxr.explain.render import resize_map


def top_region(heat: np.ndarray, frac: float = 0.2) -> np.ndarray:
    """Pixels whose value reaches the top ``frac`` (ties at the threshold included)."""
    flat = heat.ravel()
    k = max(1, math.ceil(frac * flat.size))
    thr = np.partition(flat, flat.size - k)[flat.size - k]
    return heat >= thr


def map_agreement(a: np.ndarray, b: np.ndarray, frac: float = 0.2) -> dict[str, float]:
    from scipy.stats import spearmanr

    if a.shape != b.shape:
        b = resize_map(b, a.shape)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        rho = float("nan")
    else:
        rho = float(spearmanr(a.ravel(), b.ravel()).statistic)
    ta, tb = top_region(a, frac), top_region(b, frac)
    union = int((ta | tb).sum())
    return {"spearman": rho, "top_iou": float((ta & tb).sum() / union) if union else float("nan")}


def pick_images(paths_labels: list[tuple[str, str]], n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Up to ``n`` images, taking classes in turn (each shuffled with ``seed``), so every class is represented."""
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for p, lab in sorted(paths_labels):
        groups[lab].append((p, lab))
    rng = np.random.default_rng(seed)
    queues = [[g[i] for i in rng.permutation(len(g))] for _lab, g in sorted(groups.items())]
    out: list[tuple[str, str]] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def images_from_folder(folder: str) -> list[tuple[str, str]]:
    """Every image below ``folder``; the label is the first subfolder's name (empty for loose files)."""
    if not os.path.isdir(folder):
        raise EdgecxrError(f"{folder}: --data folder not found")
    out = []
    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            if is_image_file(f):
                rel = os.path.relpath(os.path.join(dirpath, f), folder)
                parts = rel.replace(os.sep, "/").split("/")
                out.append((os.path.join(dirpath, f), parts[0] if len(parts) > 1 else ""))
    if not out:
        raise EdgecxrError(f"{folder}: no images found (png, jpg, bmp, dcm)")
    return out


def images_from_split(contract, split: str, split_csv: str | None = None) -> list[tuple[str, str]]:
    from edgecxr.eval.evaluate import resolve_samples

    index = resolve_samples(contract, None, split, split_csv)
    return [(os.path.join(index.root, s.file), s.label) for s in index.of_split(split)]


def compare_models(fp32_path: str, int8_path: str, images: list[tuple[str, str]], method: str, lime: LimeOptions,
                   frac: float = 0.2, threads: int | None = None, progress: bool = True) -> dict:
    """Per-image agreement rows and their means; see module docstring."""
    from edgecxr.explain.api import default_method
    from edgecxr.explain.lime_explain import segment_image, working_image
    from edgecxr.models.runtime import open_model
    from edgecxr.progress import progress as progress_bar

    a, b = open_model(fp32_path, threads), open_model(int8_path, threads)
    if tuple(a.contract.classes) != tuple(b.contract.classes):
        raise EdgecxrError(f"the two models have different classes ({list(a.contract.classes)} vs {list(b.contract.classes)}); "
                           "compare a model with its own quantized version")
    if method == "auto":
        method = "gradcam" if default_method(a) == default_method(b) == "gradcam" else "lime"
    classes = list(a.contract.classes)
    rows, skipped = [], []
    for path, label in progress_bar(images, desc=f"comparing ({method})", unit="img", enabled=progress, leave=True):
        try:
            gray = load_gray(path)
        except ImageError as exc:
            skipped.append({"file": path, "reason": str(exc)})
            continue
        segs = segment_image(working_image(gray), lime.segments) if method == "lime" else None
        ea: Explanation = explain(a, gray, method, None, lime, segs, progress=False)
        eb: Explanation = explain(b, gray, method, ea.target, lime, segs, progress=False)
        agree = map_agreement(ea.map, eb.map, frac)
        rows.append({"file": path, "label": label, "explained_class": classes[ea.target],
                     "pred_a": classes[int(ea.probabilities.argmax())], "pred_b": classes[int(eb.probabilities.argmax())],
                     "prob_a": float(ea.probabilities[ea.target]), "prob_b": float(eb.probabilities[ea.target]),
                     **agree, "seconds_a": ea.seconds, "seconds_b": eb.seconds})
    if not rows:
        raise EdgecxrError("no readable image to compare")
    rho = np.array([r["spearman"] for r in rows], float)
    iou = np.array([r["top_iou"] for r in rows], float)
    summary = {
        "images": len(rows), "method": method, "top_fraction": frac,
        "mean_spearman": float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan"),
        "spearman_defined": int(np.isfinite(rho).sum()),
        "mean_top_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "top1_agreement": float(np.mean([r["pred_a"] == r["pred_b"] for r in rows])),
        "mean_seconds_a": float(np.mean([r["seconds_a"] for r in rows])), "mean_seconds_b": float(np.mean([r["seconds_b"] for r in rows])),
    }
    return {"model_a": os.path.abspath(fp32_path), "model_b": os.path.abspath(int8_path), "runtime_a": a.runtime, "runtime_b": b.runtime,
            "precision_a": a.contract.precision, "precision_b": b.contract.precision, "format_a": a.contract.format,
            "format_b": b.contract.format, "lime": lime.__dict__ if method == "lime" else None,
            "summary": summary, "rows": rows, "skipped_files": skipped}


def format_table(result: dict) -> str:
    """Markdown: one row per image, then the means."""
    s = result["summary"]
    name_a = f"{os.path.basename(result['model_a'])} ({result['precision_a']})"
    name_b = f"{os.path.basename(result['model_b'])} ({result['precision_b']})"
    lines = [f"Explanation drift, {s['method']}: A = {name_a}, B = {name_b}; top region = {s['top_fraction']:.0%} most important pixels", "",
             "| image | label | explained class | pred A | pred B | p A | p B | Spearman | top IoU |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {os.path.basename(r['file'])} | {r['label']} | {r['explained_class']} | {r['pred_a']} | {r['pred_b']} | "
                     f"{r['prob_a']:.3f} | {r['prob_b']:.3f} | {_num(r['spearman'])} | {_num(r['top_iou'])} |")
    lines.append(f"| **mean of {s['images']}** | | | | top-1 agree {s['top1_agreement']:.2f} | | | **{_num(s['mean_spearman'])}** | **{_num(s['mean_top_iou'])}** |")
    lines += ["", f"seconds per explanation: A {s['mean_seconds_a']:.2f} s, B {s['mean_seconds_b']:.2f} s"
              + ("" if s["spearman_defined"] == s["images"] else f"; Spearman undefined (constant map) for {s['images'] - s['spearman_defined']} image(s)")]
    return "\n".join(lines)


def _num(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"
