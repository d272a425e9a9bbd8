#!/usr/bin/env python3
"""Coverage per class: one conformal threshold (marginal) against one per class (Mondrian),
each with its empty sets left empty (plain LAC) or filled with the classes an image is split
between (``"empty": "fill"``, what calibrate writes; ``device/decision.py: set_mask``).

For each model file: validation and test logits through the file's own runtime, the
model's temperature, then LAC thresholds fitted on validation only (marginal; per class),
and on the test split the coverage of each class with its Clopper-Pearson 95% CI, the
share referred and the accuracy when answered::

    python scripts/experiments/mondrian_vs_marginal.py runs/mnv2/best.pt runs/mnv2/export/mobilenet_v2_int8.tflite
"""
from __future__ import annotations

import sys

import numpy as np


def logits(backend, split: str) -> tuple[np.ndarray, np.ndarray]:
    from edgecxr.data.imageset import load_images
    from edgecxr.decide.report import model_logits
    from edgecxr.eval.evaluate import resolve_samples

    contract = backend.contract
    index = resolve_samples(contract, None, split, progress=False)
    batch = load_images(index, index.of_split(split), contract.preprocess, split, progress=False)
    return model_logits(backend, batch.x), batch.y


def main(paths: list[str]) -> int:
    from edgecxr.decide.fit import coverage_report, fit_conformal
    from edgecxr.device.cpufeatures import cpu_description
    from edgecxr.device.decision import calibrated_probabilities
    from edgecxr.models.runtime import open_model

    print(f"CPU: {cpu_description()}")
    for path in paths:
        backend = open_model(path)
        block = backend.contract.decision or {}
        classes = list(backend.contract.classes)
        zv, yv = logits(backend, "val")
        zt, yt = logits(backend, "test")
        pv, pt = calibrated_probabilities(zv, block), calibrated_probabilities(zt, block)
        print(f"\n{path} (T {block.get('temperature', 1.0):.4g}; {len(yv)} validation, {len(yt)} test images)")
        for name, per_class, delta, fill in (("marginal, empty", False, None, False), ("marginal, filled", False, None, True),
                                             ("per class (Mondrian)", True, None, False), ("per class, filled", True, None, True),
                                             ("per class, PAC d=0.1", True, 0.1, False), ("per class, PAC d=0.2", True, 0.2, False)):
            conf = fit_conformal(pv, yv, 0.95, "lac", per_class=per_class, delta=delta)
            if not fill:
                conf.pop("empty", None)
            rep = coverage_report(pt, yt, classes, conf)
            per = ", ".join(f"{c} {v['coverage']:.3f} [{v['coverage_ci95'][0]:.3f}, {v['coverage_ci95'][1]:.3f}] refer {v['refer']:.1%}"
                            for c, v in rep["per_class"].items())
            q = conf.get("qhat_per_class") or [conf["qhat"]]
            print(f"  {name:22s} qhat {' / '.join(f'{x:.4f}' for x in q)}: coverage {rep['coverage']:.3f}, refer {rep['refer']:.1%}, "
                  f"accuracy when answered {rep['answered_accuracy']:.4f}; {per}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
