#!/usr/bin/env python3
"""Which conformal score, and does one temperature serve every format? Measured, not assumed.

For each model file: logits on the run's validation halves and test split (once),
a temperature fitted on its own outputs and the one stored in the contract, LAC
and APS thresholds fitted on the validation split, then on test: ECE/adaptive
ECE/Brier/NLL before and after scaling, coverage and mean set size per method.
This is how ``decision_fit.DEFAULT_METHOD`` was chosen (docs/results/decision.md "Calibrated probabilities").

    nice -n 5 .venv/bin/python scripts/reproduce/decision_compare.py runs/mobilenet_v2_qat_u8/best.pt \\
        runs/mobilenet_v2_qat_u8/export/mobilenet_v2_fp32.tflite runs/mobilenet_v2_qat_u8/export/mobilenet_v2_int8.tflite
"""
from __future__ import annotations

import argparse
import json

from edgecxr.data.imageset import load_images
from edgecxr.decide.fit import coverage_report, fit_conformal, fit_images, fit_temperature
from edgecxr.decide.reliability import point_calibration
from edgecxr.decide.report import model_logits
from edgecxr.device.decision import CONFORMAL_METHODS, calibrated_probabilities
from edgecxr.eval.evaluate import resolve_samples
from edgecxr.models.runtime import open_model


def measure(path: str, coverage: float, threads: int | None, disjoint: bool) -> dict:
    backend = open_model(path, threads)
    c = backend.contract
    index = resolve_samples(c, None, "val", None, progress=False)
    half_t, half_c = fit_images(index.of_split("val"), disjoint)
    test = load_images(index, index.of_split("test"), c.preprocess, "test", progress=False)
    fit = load_images(index, half_t, c.preprocess, "T half", progress=False)
    cal = load_images(index, half_c, c.preprocess, "conformal half", progress=False)
    z_c, z_test = model_logits(backend, cal.x), model_logits(backend, test.x)
    own = fit_temperature(model_logits(backend, fit.x), fit.y)
    out = {"model": path, "format": c.format, "precision": c.precision, "n_test": len(test),
           "own_temperature": own["temperature"], "contract_temperature": (c.decision or {}).get("temperature"),
           "test_before": point_calibration(calibrated_probabilities(z_test, None), test.y),
           "test_after_own_T": point_calibration(calibrated_probabilities(z_test, own), test.y)}
    if c.decision and "temperature" in c.decision:
        out["test_after_contract_T"] = point_calibration(calibrated_probabilities(z_test, c.decision), test.y)
    for method in CONFORMAL_METHODS:
        block = fit_conformal(calibrated_probabilities(z_c, own), cal.y, coverage, method)
        rep = coverage_report(calibrated_probabilities(z_test, own), test.y, test.classes, block)
        out[method] = {"qhat": block["qhat"], "coverage": rep["coverage"], "coverage_ci95": rep["coverage_ci95"],
                       "mean_set_size": rep["mean_set_size"], "refer": rep["refer"], "empty": rep["empty"],
                       "per_class_coverage": {k: v["coverage"] for k, v in rep["per_class"].items()}}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--coverage", type=float, default=0.95)
    p.add_argument("--threads", type=int)
    p.add_argument("--disjoint", action="store_true", help="T and conformal on disjoint validation halves (default: both on all)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    rows = [measure(m, a.coverage, a.threads, a.disjoint) for m in a.models]
    for r in rows:
        b, o = r["test_before"], r["test_after_own_T"]
        print(f"{r['model']}: {r['format']} {r['precision']}, own T {r['own_temperature']:.4f}, contract T {r['contract_temperature']}")
        print(f"  test ECE {b['ece']:.4f} -> {o['ece']:.4f} (own T); adaptive {b['adaptive_ece']:.4f} -> {o['adaptive_ece']:.4f}; "
              f"NLL {b['nll']:.4f} -> {o['nll']:.4f}; Brier {b['brier']:.4f} -> {o['brier']:.4f}")
        if "test_after_contract_T" in r:
            print(f"  test ECE with the contract's T: {r['test_after_contract_T']['ece']:.4f}")
        for method in CONFORMAL_METHODS:
            m = r[method]
            print(f"  {method}: qhat {m['qhat']:.5f} coverage {m['coverage']:.4f} {m['coverage_ci95']} set size {m['mean_set_size']:.3f} "
                  f"refer {m['refer']:.3f} per class {m['per_class_coverage']}")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
