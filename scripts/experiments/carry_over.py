#!/usr/bin/env python3
"""One model, three files: does an INT8 file say what its checkpoint says, and why?

For each INT8 file, two decision blocks from the checkpoint's: T and qhat refitted afresh on
the file's own validation outputs (``ood_fit.refit_decision`` without a reference, what convert
did before) and carried over (T times the scale rounding gave the same validation images'
logits, qhat kept: what convert does now, ``edgecxr/decide/transfer.py``); the two OOD cuts
are the file's own quantiles in both. Every image of
the test split and of each ``--near`` folder then goes through the runner's own steps
(``decision_table.verdict_kinds``) with each block; printed: the share of each reason per
set, and the largest gap to the checkpoint over the reasons::

    python scripts/experiments/carry_over.py --ckpt runs/mnv2/best.pt \\
        --int8 runs/mnv2/export/mobilenet_v2_int8.tflite --int8 runs/mnv2/export/mobilenet_v2_int8.onnx \\
        --near TB=../shared/data/tbcxr/Tuberculosis --near shenzhen=../shared/data/nlm-shenzhen/Normal
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reproduce"))

from decision_table import verdict_kinds
from ood_eval import Images, folder_files, logits_of, test_cxr_files

from edgecxr.device.decision import reason_shares

KINDS = ("answer", "uncertain", "unfamiliar", "not_cxr", "quality")


def shares_per_set(z: np.ndarray, images: Images, classes: tuple[str, ...], block: dict[str, Any]) -> dict[str, dict[str, float]]:
    kinds, _ = verdict_kinds(z, images.quality_arr, classes, block)
    return {g: reason_shares([kinds[i] for i in np.flatnonzero(images.groups_arr == g)])
            for g in dict.fromkeys(images.groups)}


def gap(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in KINDS)


def main(argv: list[str] | None = None) -> int:
    from edgecxr.convert.reference import RememberedLogits
    from edgecxr.decide.ood_fit import refit_decision
    from edgecxr.device.cpufeatures import cpu_description
    from edgecxr.models.runtime import open_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="the calibrated checkpoint")
    p.add_argument("--int8", action="append", required=True, help="an INT8 file converted from it (repeatable)")
    p.add_argument("--near", action="append", default=[], metavar="NAME=DIR", help="real CXRs the model never saw")
    a = p.parse_args(argv)

    checkpoint = open_model(a.ckpt)
    block = checkpoint.contract.decision or {}
    classes = tuple(checkpoint.contract.classes)
    test_items, _ = test_cxr_files(checkpoint.contract)
    near = [item for spec in a.near for item in folder_files(spec.partition("=")[2], spec.partition("=")[0])]
    images = Images(test_items + near, checkpoint.contract.preprocess, block.get("quality"))
    base = shares_per_set(logits_of(checkpoint, images), images, classes, block)
    reference = RememberedLogits(checkpoint.model)
    print(f"CPU: {cpu_description()}")
    print(f"{os.path.basename(a.ckpt)}: T {block['temperature']:.4f}, qhat {block['conformal']['qhat']:.4f}, "
          f"unfamiliar cut {block['unfamiliar']['threshold']:.4f}, not-a-CXR cut {block['ood']['threshold']:.4f}")
    sets = list(base)
    print(f"{'file / block':44s} " + " ".join(f"{s[:14]:>14s}" for s in sets))
    print(f"{'  checkpoint: answered':44s} " + " ".join(f"{100 * base[s]['answer']:13.1f}%" for s in sets))
    for path in a.int8:
        backend = open_model(path)
        z = logits_of(backend, images)
        for name, ref in (("refitted afresh", None), ("carried over", reference)):
            backend.contract = replace(backend.contract, decision=block)
            new, _ = refit_decision(backend, None, ref)
            got = shares_per_set(z, images, classes, new)
            print(f"{os.path.basename(path)}, {name}: T {new['temperature']:.4f}, qhat {new['conformal']['qhat']:.4f}, "
                  f"unfamiliar cut {new['unfamiliar']['threshold']:.4f}, not-a-CXR cut {new['ood']['threshold']:.4f}")
            print(f"{'  answered':44s} " + " ".join(f"{100 * got[s]['answer']:13.1f}%" for s in sets))
            print(f"{'  largest gap to the checkpoint, any reason':44s} " + " ".join(f"{100 * gap(got[s], base[s]):12.1f}pp" for s in sets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
