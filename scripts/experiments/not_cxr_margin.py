#!/usr/bin/env python3
"""Where should "not a chest X-ray" start for one checkpoint, and which score puts a real CXR past it?

The head carries ``max(r, t)``: the feature distance ``r`` and the folded discriminator ``t``
(``edgecxr/decide/ood_head.py``). For the checkpoint's validation cut R (the largest validation
score) and wider cuts (1.1 R, 1.25 R, and the 1% / 5% quantiles of 600 drawn non-CXR images
from a seed the discriminator never saw), printed per set: the share past the cut, and for R
the share past it by the distance alone and by the discriminator alone::

    python scripts/experiments/not_cxr_margin.py --ckpt runs/ref/mobilenet_v2_qat/best.pt --ood-set runs/ood_set \\
        --near TB=../shared/data/tbcxr/Tuberculosis --near shenzhen=../shared/data/nlm-shenzhen/Normal
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reproduce"))

from ood_eval import Images, folder_files, ood_set_files

HELD_OUT_SEED = 12345  # not negatives.SEED: images the discriminator was not fitted on
NON_CXR_GROUPS = ("photos", "documents", "synthetic", "medical_other")


def main(argv: list[str] | None = None) -> int:
    from edgecxr.decide import negatives
    from edgecxr.decide.ood_fit import gray_features
    from edgecxr.decide.ood_head import carried_scores, from_payload, pooled_features, raw_scores, transform_features
    from edgecxr.device.cpufeatures import cpu_description
    from edgecxr.models.checkpoint import load_checkpoint
    from edgecxr.models.factory import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a checkpoint calibrated with the discriminator")
    p.add_argument("--ood-set", default="runs/ood_set", help="folder built by scripts/reproduce/build_ood_set.py")
    p.add_argument("--near", action="append", default=[], metavar="NAME=DIR", help="real CXRs the model never saw")
    a = p.parse_args(argv)

    model, contract = load_model(a.ckpt, ood_head=False)
    numbers = from_payload(load_checkpoint(a.ckpt)["ood_head"])
    if numbers.get("not_cxr_weight") is None:
        print(f"{a.ckpt}: its head has no discriminator; run `edgecxr calibrate` on it", file=sys.stderr)
        return 2
    spec, cut = contract.preprocess, float(contract.decision["ood"]["threshold"])
    held = carried_scores(gray_features(model, negatives.drawn_negatives(600, seed=HELD_OUT_SEED), spec), numbers)
    items = [it for s in a.near for it in folder_files(s.partition("=")[2], s.partition("=")[0])]
    items += [it for it in ood_set_files(a.ood_set) if it[1] in NON_CXR_GROUPS]
    images = Images(items, spec, None)
    feats = pooled_features(model, images.x(np.arange(len(images.files))))
    r = raw_scores(feats, numbers) / float(numbers["scale"])
    t = transform_features(feats, numbers.get("transform", "none")) @ np.asarray(numbers["not_cxr_weight"]) + float(numbers["not_cxr_bias"])
    s = carried_scores(feats, numbers)
    groups = list(dict.fromkeys(images.groups))
    print(f"CPU: {cpu_description()}")
    print(f"{os.path.basename(a.ckpt)}: validation cut R {cut:.3f}; held-out drawn non-CXR images: 1% quantile "
          f"{np.quantile(held, 0.01):.3f}, 5% {np.quantile(held, 0.05):.3f}")
    print(f"{'cut':22s} {'value':>6s} {'drawn':>6s} " + " ".join(f"{g[:13]:>13s}" for g in groups))
    cuts = [("R", cut), ("1.1 R", 1.1 * cut), ("1.25 R", 1.25 * cut),
            ("max(R, drawn 1%)", max(cut, float(np.quantile(held, 0.01)))), ("max(R, drawn 5%)", max(cut, float(np.quantile(held, 0.05))))]
    for name, c in cuts:
        print(f"{name:22s} {c:6.3f} {np.mean(held > c):6.3f} " + " ".join(f"{np.mean(s[images.groups_arr == g] > c):13.3f}" for g in groups))
    for name, score in (("R, distance alone", r), ("R, discriminator alone", t)):
        print(f"{name:22s} {cut:6.3f} {'':6s} " + " ".join(f"{np.mean(score[images.groups_arr == g] > cut):13.3f}" for g in groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
