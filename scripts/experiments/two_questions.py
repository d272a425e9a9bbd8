#!/usr/bin/env python3
"""Which score answers "is this a chest X-ray at all?" and which "is this CXR like the validated ones?".

For one calibrated checkpoint (its OOD head fitted by ``edgecxr calibrate``), the pooled features
of the training, validation and test images, of other CXR sources (TB, another hospital's
normals) and of the non-CXR set are cached once; every candidate score is then computed from
them with numpy, its threshold set on the validation CXRs only, and the share each set would
get flagged printed side by side. Nothing here is fitted on test images or on the other sources.

    python scripts/experiments/two_questions.py --ckpt runs/mnv2/best.pt --ood-set runs/ood_set \
        --near tb=../shared/data/tbcxr/Tuberculosis --near shenzhen=../shared/data/nlm-shenzhen/Normal --cache runs/mnv2/feats.npz
"""
from __future__ import annotations

import argparse
import os

import numpy as np


def _features(model, files: list[str], spec) -> np.ndarray:
    from edgecxr.decide import ood_head
    from edgecxr.device.image_io import ImageError, load_gray
    from edgecxr.device.preprocess import normalize, prepare_gray

    out = []
    for i in range(0, len(files), 64):
        xs = []
        for f in files[i : i + 64]:
            try:
                xs.append(normalize(prepare_gray(load_gray(f), spec), spec))
            except ImageError:
                xs.append(np.zeros((3, spec.size, spec.size), np.float32))
        out.append(ood_head.pooled_features(model, np.stack(xs).astype(np.float32)))
    return np.concatenate(out)


def _sets(contract, ood_set: str, near: list[str]) -> dict[str, tuple[list[str], np.ndarray | None]]:
    from edgecxr.data.folders import read_split_csv
    from edgecxr.device.image_io import is_image_file

    index = read_split_csv(contract.source["split_csv"], contract.source["data_root"], list(contract.classes))
    sets: dict[str, tuple[list[str], np.ndarray | None]] = {}
    for split in ("train", "val", "test"):
        samples = index.of_split(split)
        sets[split] = ([os.path.join(index.root, s.file) for s in samples], np.array([index.classes.index(s.label) for s in samples]))
    for item in near:
        name, folder = item.split("=", 1)
        files = sorted(os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if is_image_file(f))
        sets[name] = (files, None)
    import csv

    with open(os.path.join(ood_set, "MANIFEST.csv")) as fh:
        for row in csv.DictReader(fh):
            sets.setdefault("ood_" + row["group"], ([], None))[0].append(os.path.join(ood_set, row["file"]))
    return sets


def cache_features(ckpt: str, ood_set: str, near: list[str], cache: str) -> dict[str, np.ndarray]:
    if os.path.exists(cache):
        return dict(np.load(cache, allow_pickle=False))
    import torch

    from edgecxr.models.factory import load_model

    model, contract = load_model(ckpt, ood_head=False)
    torch.set_num_threads(2)
    arrays: dict[str, np.ndarray] = {}
    for name, (files, y) in _sets(contract, ood_set, near).items():
        arrays[f"f_{name}"] = _features(model, files, contract.preprocess)
        if y is not None:
            arrays[f"y_{name}"] = y
        print(f"features: {name} {len(files)}", flush=True)
    lin = model.head[-1] if isinstance(model.head, torch.nn.Sequential) else model.head
    arrays["W"] = lin.weight.detach().double().numpy()
    arrays["b"] = lin.bias.detach().double().numpy()
    np.savez(cache, **arrays)
    return arrays


def candidate_scores(a: dict[str, np.ndarray], numbers: dict) -> dict[str, dict[str, np.ndarray]]:
    """Every candidate score for every set: name -> set -> scores (larger = stranger)."""
    from edgecxr.decide import ood_head

    names = sorted(k[2:] for k in a if k.startswith("f_"))
    W, b = a["W"], a["b"]
    t = {n: ood_head.transform_features(a[f"f_{n}"], numbers["transform"]) for n in names}
    u = {n: (t[n] - numbers["mean"]) @ numbers["projection"] for n in names}
    centers = np.asarray(numbers["centers"])
    d = {n: ((u[n][:, None, :] - centers[None]) ** 2).sum(axis=2) for n in names}  # N x C squared distances
    ytr = a["y_train"]
    bg_mu = u["train"].mean(0)
    bg_prec = np.linalg.pinv(np.cov((u["train"] - bg_mu).T))
    z = {n: a[f"f_{n}"] @ W.T + b for n in names}
    zc = {n: z[n] - z[n].mean(1, keepdims=True) for n in names}
    means = np.stack([zc["train"][ytr == c].mean(0) for c in range(W.shape[0])])
    resid = zc["train"] - means[ytr]
    lprec = np.linalg.pinv(resid.T @ resid / len(resid))
    tr = t["train"] / np.linalg.norm(t["train"], axis=1, keepdims=True)
    out: dict[str, dict[str, np.ndarray]] = {k: {} for k in ("maha_min", "maha_pred", "rmd", "logit_maha", "energy", "msp", "knn10")}
    for n in names:
        bg = np.einsum("nd,de,ne->n", u[n] - bg_mu, bg_prec, u[n] - bg_mu)
        out["maha_min"][n] = d[n].min(1) / numbers["scale"]
        out["maha_pred"][n] = d[n][np.arange(len(d[n])), z[n].argmax(1)] / numbers["scale"]
        out["rmd"][n] = (d[n] - bg[:, None]).min(1)
        dz = zc[n][:, None, :] - means[None]
        out["logit_maha"][n] = np.einsum("ncd,de,nce->nc", dz, lprec, dz).min(1)
        m = zc[n].max(1, keepdims=True)
        lse = (m + np.log(np.exp(zc[n] - m).sum(1, keepdims=True)))[:, 0]
        out["energy"][n] = -lse
        out["msp"][n] = -np.exp(zc[n].max(1) - lse)
        tn = t[n] / np.linalg.norm(t[n], axis=1, keepdims=True)
        sims = np.sort(tn @ tr.T, axis=1)[:, -10]
        out["knn10"][n] = 1.0 - sims
    return out


def report(scores: dict[str, dict[str, np.ndarray]], a: dict[str, np.ndarray], classes: list[str]) -> None:
    sets = [n for n in scores["maha_min"] if n != "train"]
    print("\n== 'unfamiliar' candidates: threshold = validation 95% quantile; share flagged per set")
    print(f"{'score':12s}" + "".join(f"{n[:14]:>15s}" for n in sets))
    for name, per in scores.items():
        thr = np.quantile(per["val"], 0.95)
        print(f"{name:12s}" + "".join(f"{np.mean(per[n] > thr):15.3f}" for n in sets))
    yt = a["y_test"]
    print("\n== test share flagged per class at that threshold")
    for name, per in scores.items():
        thr = np.quantile(per["val"], 0.95)
        print(f"{name:12s}" + "  ".join(f"{c} {np.mean(per['test'][yt == i] > thr):.3f}" for i, c in enumerate(classes)))
    r = scores["maha_min"]
    print("\n== 'not a CXR' score maha_min (unclipped), quantiles per set")
    for n in sets:
        q = np.quantile(r[n], [0.0, 0.01, 0.05, 0.5, 0.95, 0.99, 1.0])
        print(f"{n[:16]:16s} n={len(r[n]):4d} " + " ".join(f"{v:7.2f}" for v in q))
    print("\n== 'not a CXR' threshold = margin x validation max; share refused per set")
    vmax = r["val"].max()
    for margin in (1.0, 1.25, 1.5, 2.0, 2.5):
        thr = margin * vmax
        print(f"margin {margin:4.2f} thr {thr:6.2f} " + " ".join(f"{n[:10]}={np.mean(r[n] > thr):.3f}" for n in sets))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--ood-set", required=True)
    p.add_argument("--near", action="append", default=[], metavar="NAME=DIR")
    p.add_argument("--cache", required=True)
    a = p.parse_args()
    from edgecxr.decide.ood_head import from_payload
    from edgecxr.models.checkpoint import load_checkpoint
    from edgecxr.models.factory import load_model

    arrays = cache_features(a.ckpt, a.ood_set, a.near, a.cache)
    numbers = from_payload(load_checkpoint(a.ckpt)["ood_head"])
    _, contract = load_model(a.ckpt)
    report(candidate_scores(arrays, numbers), arrays, list(contract.classes))


if __name__ == "__main__":
    main()
