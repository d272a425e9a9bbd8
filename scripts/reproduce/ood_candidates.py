#!/usr/bin/env python3
"""Which out-of-distribution score to ship: candidates measured in PyTorch on one checkpoint.

Runs the checkpoint (without any OOD head) on its run's train/val/test CXRs, a near
in-distribution folder (``--near``) and the OOD set (``scripts/reproduce/build_ood_set.py``),
keeps pooled features and logits, and scores every candidate: max-softmax, max-logit,
energy, Mahalanobis on the logits, class-conditional Mahalanobis on the pooled
features (full, PCA-reduced on raw features, PCA-reduced on within-class residuals,
and class-agnostic), the shipped head (``edgecxr/decide/ood_head.py``, 256 PCA dims) under each
feature transform (none, sqrt, l2, sqrt_l2), KNN on normalised features, feature norm. Each is fitted on
the training images and thresholded at 95% TPR on validation CXRs; the table gives
AUROC (test CXRs vs group) / share of the group accepted at that threshold, and the
share of test CXRs and near images refused.

    python scripts/reproduce/ood_candidates.py --ckpt runs/mnv2/best.pt --ood-set runs/ood_set \\
        --near ../shared/data/tbcxr --cache /tmp/mnv2_feats.npz [--train-images 900]

The measurements behind ``edgecxr/decide/ood_head.py`` (docs/results/decision.md "Refusing what is not a chest X-ray") were made with it.

``--write-head`` then does what ``edgecxr calibrate`` adds to a checkpoint (OOD head from
the cached training features, threshold at 95% TPR on the cached validation features,
quality block checked on the train and validation images), without running the model
again: the same functions on the same features, for a machine too loaded to repeat
the forward passes. The checkpoint's other decision keys (temperature, conformal) are kept.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np


def extract(ckpt: str, ood_set: str, near: str | None, train_images: int | None, out: str) -> None:
    import torch

    from edgecxr.device.image_io import load_gray
    from edgecxr.device.preprocess import preprocess
    from edgecxr.eval.evaluate import resolve_samples
    from edgecxr.models.factory import load_model

    model, contract = load_model(ckpt)
    if hasattr(model.head, "score"):
        raise SystemExit(f"{ckpt} carries an OOD head; measure candidates on the plain checkpoint")
    index = resolve_samples(contract, None, "test", progress=False)
    items = []
    for split in ("train", "val", "test"):
        samples = index.of_split(split)
        if split == "train" and train_images:
            from edgecxr.data.folders import stratified_subset

            samples = stratified_subset(samples, train_images)
        items += [(os.path.join(index.root, s.file), f"cxr_{split}", s.label) for s in samples]
    if near:
        for root, dirs, files in os.walk(near):
            dirs.sort()
            items += [(os.path.join(root, f), "near", os.path.basename(root)) for f in sorted(files) if f.endswith(".png")]
    with open(os.path.join(ood_set, "MANIFEST.csv"), encoding="utf-8") as fh:
        items += [(os.path.join(ood_set, r["file"]), r["group"], r["source"]) for r in csv.DictReader(fh)]
    feats, logits = [], []
    with torch.inference_mode():
        for i in range(0, len(items), 32):
            x = torch.from_numpy(np.stack([preprocess(load_gray(p), contract.preprocess) for p, _, _ in items[i : i + 32]]))
            f = model.backbone(x)
            feats.append(f.numpy())
            logits.append(model.head(f).numpy())
    np.savez(out, feats=np.concatenate(feats), logits=np.concatenate(logits), groups=np.array([g for _, g, _ in items]),
             labels=np.array([lab for _, _, lab in items]), classes=np.array(contract.classes))


def _lse(z: np.ndarray) -> np.ndarray:
    m = z.max(1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]


def _gauss(x: np.ndarray, y: np.ndarray, k: int | None, classcond: bool = True, residual_pca: bool = True):
    from sklearn.covariance import LedoitWolf

    n_cls = int(y.max()) + 1
    mu = x.mean(0)
    mus = np.stack([x[y == c].mean(0) for c in range(n_cls)]) if classcond else mu[None]
    resid = x - (mus[y] if classcond else mu)
    if k and k < x.shape[1]:
        _, _, vt = np.linalg.svd(resid if residual_pca else x - mu, full_matrices=False)
        p = vt[:k].T
    else:
        p = np.eye(x.shape[1])
    cov = LedoitWolf().fit(resid @ p).covariance_ if p.shape[1] > 16 else np.cov((resid @ p).T)
    w, v = np.linalg.eigh(cov)
    a = p @ (v / np.sqrt(np.maximum(w, 1e-12)))
    centers = (mus - mu) @ a
    return lambda z: (((((z - mu) @ a)[:, None, :] - centers[None]) ** 2).sum(-1)).min(1)


def candidates(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from edgecxr.decide import ood_head

    f, z, g, lab = d["feats"].astype(np.float64), d["logits"].astype(np.float64), d["groups"], d["labels"]
    classes = list(d["classes"])
    tr = g == "cxr_train"
    y = np.array([classes.index(v) for v in lab[tr]])
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    knn = fn[tr]
    return {
        "msp": -np.exp(z.max(1) - _lse(z)),
        "max_logit": -z.max(1),
        "energy": -_lse(z),
        "logit_mahalanobis": _gauss(z[tr], y, None)(z),
        "feature_norm": -np.linalg.norm(f, axis=1),
        "knn10_cosine": -np.sort(fn @ knn.T, axis=1)[:, -10],
        "feat_maha_full": _gauss(f[tr], y, None)(f),
        "feat_maha_pca128_raw": _gauss(f[tr], y, 128, residual_pca=False)(f),
        "feat_maha_global_256": _gauss(f[tr], y, 256, classcond=False)(f),
        **{f"feat_maha_resid_pca{k}": _gauss(f[tr], y, k)(f) for k in (64, 128, 256, 512)},
        **{f"head_{t}_pca256": ood_head.raw_scores(f, ood_head.fit_numbers(f[tr], y, len(classes), transform=t))
           for t in ood_head.TRANSFORMS},
    }


def table(d: dict[str, np.ndarray], scores: dict[str, np.ndarray]) -> str:
    from edgecxr.decide.ood_fit import auroc, threshold_at_tpr

    g = d["groups"]
    groups = [x for x in dict.fromkeys(g) if not x.startswith("cxr_") and x != "near"]
    te, va = g == "cxr_test", g == "cxr_val"
    lines = ["| method | " + " | ".join(f"{x} AUROC / accepted" for x in groups) + " | test CXRs refused | near refused |",
             "|" + "---|" * (len(groups) + 3)]
    for name, s in scores.items():
        t = threshold_at_tpr(s[va], 0.95)
        cells = [f"{auroc(s[te], s[g == x]):.4f} / {np.mean(s[g == x] <= t):.3f}" for x in groups]
        near = f"{np.mean(s[g == 'near'] > t):.3f}" if np.any(g == "near") else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(s[te] > t):.3f} | {near} |")
    return "\n".join(lines)


def write_head(d: dict[str, np.ndarray], ckpt: str) -> dict:
    """Fit the head on the cached training features and store it plus ``ood``/``quality`` in ``ckpt``."""
    from edgecxr.decide import ood_head
    from edgecxr.decide.ood_fit import fit_ood, quality_block_counts, store_head
    from edgecxr.decide.store import read_contract, write_decision
    from edgecxr.device.image_io import load_gray
    from edgecxr.device.ood import QUALITY_DEFAULTS, quality_problem
    from edgecxr.eval.evaluate import resolve_samples

    contract = read_contract(ckpt)
    g, f = d["groups"], d["feats"].astype(np.float64)
    tr, va = g == "cxr_train", g == "cxr_val"
    classes = list(d["classes"])
    numbers = ood_head.fit_numbers(f[tr], np.array([classes.index(v) for v in d["labels"][tr]]), len(classes))
    r_val = np.clip(ood_head.raw_scores(f[va], numbers) / numbers["scale"], 0.0, numbers["cap"])
    # fit_ood reads the score as -mean(logits): hand it logits whose mean is -r
    spec = fit_ood(np.zeros((0, len(classes))), np.zeros(0, int), -np.repeat(r_val[:, None], len(classes), 1), len(classes),
                   ood_head.METHOD)
    index = resolve_samples(contract, None, "val", progress=False)
    problems = []
    for s in index.of_split("train") + index.of_split("val"):
        p = quality_problem(load_gray(f"{index.root}/{s.file}"), QUALITY_DEFAULTS)
        problems.append(p[0] if p else "")
    spec.update({"n_fit": int(tr.sum()), "fitted_with": "pytorch fp32 (cached features, scripts/reproduce/ood_candidates.py --write-head)",
                 "split": "val", "data_root": index.root, "dims": int(numbers["dims"]), "scale": float(numbers["scale"]),
                 "cap": float(numbers["cap"]), "features": numbers["transform"]})
    store_head(ckpt, numbers)
    block = {**(contract.decision or {}), "ood": spec, "quality": quality_block_counts(problems)}
    write_decision(ckpt, block)
    read_contract(ckpt)  # reads back
    return block


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--ood-set", default="runs/ood_set")
    p.add_argument("--near", help="near in-distribution folder (e.g. ../shared/data/tbcxr)")
    p.add_argument("--train-images", type=int, help="stratified subset of the training split to fit on (default all)")
    p.add_argument("--cache", required=True, help="features/logits .npz (reused when it exists)")
    p.add_argument("--write-head", metavar="CKPT", help="store the OOD head fitted on the cached features in CKPT (a copy of --ckpt)")
    p.add_argument("--no-table", action="store_true", help="skip the candidates table")
    a = p.parse_args(argv)
    if not os.path.exists(a.cache):
        extract(a.ckpt, a.ood_set, a.near, a.train_images, a.cache)
    d = dict(np.load(a.cache))
    if not a.no_table:
        print(table(d, candidates(d)))
    if a.write_head:
        block = write_head(d, a.write_head)
        o = block["ood"]
        print(f"wrote the OOD head ({o['dims']} dims, scale {o['scale']:.2f}) and threshold {o['threshold']:.4f} "
              f"({o['val_refused']:.1%} of {o['n_threshold']} validation images refused) into {a.write_head}; "
              f"quality checks refused {block['quality'].get('checked_on')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
