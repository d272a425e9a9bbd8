#!/usr/bin/env python3
"""Does a not-a-CXR score that learned only from drawn images refuse real non-CXR images?

The head's discriminator (``edgecxr/decide/ood_head.py: fit_not_cxr``) learns training CXRs
(and degraded copies of them) against images drawn by ``edgecxr/decide/negatives.py``; the non-CXR evaluation set
(``scripts/reproduce/build_ood_set.py``: package sample photos, documents, medical images) is
never shown to it, so every number on it here is held out. Two tables:

1. leave-one-family-out on the drawn images themselves, for each ``--c``: fitted without one
   family, cut at the largest validation CXR logit, the share of that family refused. This is
   how the default C was chosen, without looking at the evaluation set;
2. for each ``--c``, the carried score ``max(distance, discriminator)`` cut at its largest
   validation value (what the device refuses above), on every cached set, against the
   distance alone.

    python scripts/experiments/outlier_exposure.py --ckpt runs/mnv2/best.pt --cache runs/mnv2/feats.npz \
        [--extra site_jpeg30=/tmp/sites/jpeg_30 ...]

``--cache``: the feature cache ``two_questions.py`` writes (the plain model's pooled features).
"""
from __future__ import annotations

import argparse

import numpy as np


def fit_features(ckpt: str, count: int, extra: list[str]) -> dict[str, np.ndarray]:
    """Pooled features through the checkpoint's plain model of what calibrate fits on (``count`` drawn
    negatives and their families, ``count`` degraded training CXRs: ``ood_fit.discriminator_examples``)
    and of each ``NAME=DIR`` in ``extra``."""
    import os

    import torch

    from edgecxr.data.folders import read_split_csv
    from edgecxr.decide import negatives
    from edgecxr.decide.ood_fit import discriminator_examples, gray_features
    from edgecxr.device.image_io import is_image_file, load_gray
    from edgecxr.models.factory import load_model

    torch.set_num_threads(2)
    model, contract = load_model(ckpt, ood_head=False)
    index = read_split_csv(contract.source["split_csv"], contract.source["data_root"], list(contract.classes))
    drawn, degraded = discriminator_examples(model, index, contract.preprocess, count)
    out = {"drawn": drawn, "families": np.array(negatives.family_order(count)), "degraded": degraded}
    for item in extra:
        name, folder = item.split("=", 1)
        files = sorted(os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if is_image_file(f))
        out[f"f_{name}"] = gray_features(model, [load_gray(f) for f in files], contract.preprocess)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="the calibrated checkpoint the cache was made from")
    p.add_argument("--cache", required=True, help="feature cache written by two_questions.py")
    p.add_argument("--count", type=int, default=600, help="drawn negatives (calibrate --not-cxr-examples)")
    p.add_argument("--c", type=float, action="append", help="logistic regression C (repeatable; default 0.3 1 3 10)")
    p.add_argument("--transform", default="sqrt_l2", help="the OOD head's feature transform (edgecxr calibrate --ood-features)")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=DIR", help="more CXR folders to score (simulated sites)")
    a = p.parse_args()
    from sklearn.linear_model import LogisticRegression

    from edgecxr.decide import ood_head

    feats = dict(np.load(a.cache))
    fitted = fit_features(a.ckpt, a.count, a.extra)
    neg, fam = fitted["drawn"], fitted["families"]
    pos = np.concatenate([feats["f_train"], fitted["degraded"]])
    feats.update({k: v for k, v in fitted.items() if k.startswith("f_")})
    tf = lambda f: ood_head.transform_features(f, a.transform)  # noqa: E731
    cs = a.c or [0.3, 1.0, 3.0, 10.0]
    print(f"== leave one drawn family out: share of the held-out family refused at the largest validation CXR logit ({a.count} drawn)")
    for c in cs:
        row = []
        for held in dict.fromkeys(fam):
            keep = fam != held
            x = np.concatenate([tf(pos), tf(neg[keep])])
            y = np.r_[np.zeros(len(pos)), np.ones(keep.sum())]
            clf = LogisticRegression(C=c, max_iter=5000).fit(x, y, sample_weight=np.where(y == 1, len(pos) / keep.sum(), 1.0))
            cut = clf.decision_function(tf(feats["f_val"])).max()
            row.append(f"{held} {np.mean(clf.decision_function(tf(neg[~keep])) > cut):.2f}")
        print(f"C={c:<5g} " + "  ".join(row))
    plain = ood_head.fit_numbers(feats["f_train"], feats["y_train"], int(feats["y_train"].max()) + 1, transform=a.transform)
    sets = [k[2:] for k in feats if k.startswith("f_") and k != "f_train"]
    cut_d = ood_head.carried_scores(feats["f_val"], plain).max()
    print(f"\n== refused above the largest validation score: distance alone (cut {cut_d:.3f}) | with the discriminator, per C")
    print(f"{'set':20s} {'n':>5s} {'distance':>9s} " + " ".join(f"{'C=' + format(c, 'g'):>8s}" for c in cs))
    numbers = {c: ood_head.fit_not_cxr(plain, pos, neg, feats["f_val"], c) for c in cs}
    for s in sets:
        f = feats[f"f_{s}"]
        with_disc = [np.mean(ood_head.carried_scores(f, numbers[c]) > ood_head.carried_scores(feats["f_val"], numbers[c]).max()) for c in cs]
        print(f"{s:20s} {len(f):5d} {np.mean(ood_head.carried_scores(f, plain) > cut_d):9.3f} " + " ".join(f"{v:8.3f}" for v in with_disc))


if __name__ == "__main__":
    main()
