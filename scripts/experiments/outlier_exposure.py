#!/usr/bin/env python3
"""Would a discriminative "is this a chest X-ray?" score (outlier exposure) answer the first question better?

Reads the feature cache ``two_questions.py`` writes. For each group of the non-CXR set in
turn, a logistic regression on the head's transformed pooled features is fitted to tell the
training CXRs from the *other* groups (class-balanced), cut at the largest validation CXR
score, and judged on the group it never saw and on CXRs it never saw (test, TB, other
hospitals): leave-one-group-out, so a group's number says how it would do on a kind of
non-CXR image nobody put in the set::

    python scripts/experiments/outlier_exposure.py --cache runs/mnv2/feats.npz
"""
from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--transform", default="sqrt_l2", help="the OOD head's feature transform (edgecxr calibrate --ood-features)")
    p.add_argument("--cache", required=True, help="feature cache written by two_questions.py")
    a = p.parse_args()
    from sklearn.linear_model import LogisticRegression

    from edgecxr.decide import ood_head

    feats = dict(np.load(a.cache))
    t = {k[2:]: ood_head.transform_features(v, a.transform) for k, v in feats.items() if k.startswith("f_")}
    groups = [g for g in t if g.startswith("ood_") and g != "ood_blank"]  # blank frames are the quality checks' job
    cxrs = [n for n in ("test", "tb", "tbnormal", "shenzhen") if n in t]
    for held in groups:
        others = [g for g in groups if g != held]
        x = np.concatenate([t["train"], *(t[g] for g in others)])
        y = np.concatenate([np.zeros(len(t["train"])), *(np.ones(len(t[g])) for g in others)])
        w = np.where(y == 1, (y == 0).sum() / (y == 1).sum(), 1.0)
        clf = LogisticRegression(C=1.0, max_iter=3000).fit(x, y, sample_weight=w)
        cut = clf.decision_function(t["val"]).max()
        print(f"held out {held[4:]:15s} refused {np.mean(clf.decision_function(t[held]) > cut):.3f}; CXRs refused: "
              + ", ".join(f"{n} {np.mean(clf.decision_function(t[n]) > cut):.3f}" for n in cxrs))


if __name__ == "__main__":
    main()
