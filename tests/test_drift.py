"""The drift watch: sitecheck's rules over the device's last N results. Off on images like the
validation ones, on for a shifted site, in one line; the reference it compares with is stored in
the contract where the decision block is fitted."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from helpers import ROOT
from test_sitecheck import _simulate, site_model  # noqa: F401  (the calibrated EfficientNet-Lite0 fixture, and its site maker)

from edgecxr.device.drift import DriftWatch, stored_reference
from edgecxr.device.site_rules import GO, NO_GO, judge

RUNNER = str(ROOT / "device" / "edgecxr_runner.py")
CLASSES = ("A", "B", "C")


def _block(rng: np.random.Generator, threshold: float = 3.0) -> dict:
    ood = {"method": "feature_mahalanobis", "threshold": threshold}
    ref = {"schema": "edgecxr.reference/1", "score": {"method": "feature_mahalanobis", "threshold": threshold},
           "ood_scores": rng.normal(0.0, 1.0, 300).round(4).tolist(),
           "confusion_counts": [[90, 5, 5], [5, 90, 5], [5, 5, 90]], "train_counts": {"A": 100, "B": 100, "C": 100}}
    return {"ood": ood, "reference": ref}


def _rec(rng: np.random.Generator, shift: float = 0.0, mix: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 3)) -> dict:
    score = float(rng.normal(shift, 1.0))
    c = CLASSES[rng.choice(3, p=mix)]
    probs = {k: (0.9 if k == c else 0.05) for k in CLASSES}
    if score > 3.0:
        return {"action": "refuse", "reason_kind": "not_cxr", "label": None, "probabilities": probs, "ood_score": score}
    return {"action": "answer", "reason_kind": "answer", "label": c, "probabilities": probs, "ood_score": score}


def test_the_watch_stays_off_on_images_like_validation_and_turns_on_for_a_shift_once():
    rng = np.random.default_rng(0)
    watch = DriftWatch(CLASSES, _block(rng), window=200)
    events = [watch.update(_rec(rng)) for _ in range(600)]
    assert not any(events) and watch.status()["state"] == GO, watch.status()
    events = [e for e in (watch.update(_rec(rng, shift=1.5)) for _ in range(400)) if e]
    assert len(events) == 1 and events[0]["drift"] == NO_GO and events[0]["line"].startswith("DRIFT over the last 200 images: NO-GO")
    assert "OOD score shifted" in events[0]["line"] and "KS D=" in events[0]["line"]
    back = [e for e in (watch.update(_rec(rng)) for _ in range(400)) if e]
    assert [e["drift"] for e in back] == [GO] and back[0]["line"].startswith("DRIFT cleared")


def test_a_class_mix_far_from_training_is_judged_by_sitechecks_rule():
    rng = np.random.default_rng(1)
    watch = DriftWatch(CLASSES, _block(rng), window=200)
    events = [e for e in (watch.update(_rec(rng, mix=(0.9, 0.05, 0.05))) for _ in range(200)) if e]
    assert events and "called A against 33% in training" in events[0]["line"]
    assert judge(watch.measure(), watch.rules)["line"] == watch.status()["line"]  # the very rules of site_rules


def test_without_a_stored_reference_the_watch_is_off_and_says_why():
    assert stored_reference({"ood": {"method": "energy", "threshold": 1.0}})[0] is None
    stale = _block(np.random.default_rng(2))
    stale["ood"]["threshold"] = 9.0  # recalibrated after the reference was stored
    watch = DriftWatch(CLASSES, stale)
    assert watch.disabled and "predates" in watch.status()["line"] and watch.update(_rec(np.random.default_rng(3))) is None


def _arrival_order(site, out):
    """The site's images in one folder, shuffled (seed 0): the order a device sees patients in, not
    sorted by class as the labelled folders are (a window of one class is a class-mix shift)."""
    import shutil

    files = sorted(p for p in site.rglob("*.png"))
    out.mkdir()
    for i, j in enumerate(np.random.default_rng(0).permutation(len(files))):
        shutil.copyfile(files[j], out / f"{i:04d}.png")
    return out


def _runner_dir(model: str, folder: str, tmp_path, window: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, RUNNER, "--model", model, "--dir", folder, "--json", "--drift-window", str(window),
                           "--csv", str(tmp_path / "p.csv")], capture_output=True, text=True, timeout=300)


def test_on_the_device_drift_is_off_on_held_out_test_images_and_on_for_a_simulated_site_shift(site_model, tmp_path):  # noqa: F811
    """calibrate stored the validation reference in the checkpoint; convert carries it into the ONNX file."""
    from helpers import run_cli

    from edgecxr.device.contract import read_onnx_contract

    run_cli("convert", str(site_model / "model.pt"), "--out", str(tmp_path / "export"), "--formats", "onnx", "--int8",
            "--no-verify", "--threads", "1", "--quiet")
    model = str(tmp_path / "export" / "efficientnet_lite0_fp32.onnx")
    ref, why = stored_reference(read_onnx_contract(model).decision)
    assert ref is not None, why
    int8 = read_onnx_contract(str(tmp_path / "export" / "efficientnet_lite0_int8.onnx")).decision
    assert stored_reference(int8)[0] is not None and int8["reference"]["fitted_with"] == "onnx int8"  # refitted: its own scores
    test_site = _arrival_order(_simulate(site_model, tmp_path / "test_split"), tmp_path / "test_arrivals")
    shifted = _arrival_order(_simulate(site_model, tmp_path / "crop", "crop:0.15"), tmp_path / "crop_arrivals")
    off = _runner_dir(model, str(test_site), tmp_path, 60)
    on = _runner_dir(model, str(shifted), tmp_path, 60)
    assert off.returncode == 0 and on.returncode == 0, off.stderr + on.stderr
    assert "DRIFT" not in off.stderr, off.stderr
    drift = [x for x in on.stderr.splitlines() if "DRIFT over the last 60 images: NO-GO" in x]
    assert len(drift) == 1, on.stderr
    print(f"held-out test split ({len(off.stdout.splitlines())} images): no DRIFT line; crop:0.15: {drift[0]}")
    assert all("ood_score" in json.loads(x) for x in on.stdout.splitlines() if '"reason_kind": "quality"' not in x)
