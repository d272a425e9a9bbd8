"""Refusing what is not a chest X-ray: image-quality checks on pixels, an OOD threshold
that keeps the true-positive rate it was fitted for, and a photo refused by the bare
device runner (numpy + onnxruntime) on a real exported model."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_bare_runner
from scipy.stats import betabinom

from edgecxr.decide.ood_fit import auroc, fit_logit_gaussians, fit_ood, fpr_at_tpr, quality_block, threshold_at_tpr
from edgecxr.device.decision import decide, quality_refusal
from edgecxr.device.ood import QUALITY_DEFAULTS, OodSpecError, ood_refusal, ood_scores, quality_problem

ROOT = Path(__file__).resolve().parents[1]


def _cxr_like(size: int = 256, seed: int = 0) -> np.ndarray:
    from edgecxr.data.synthetic import make_image

    return make_image("Normal", seed, size=size)


# --- quality -------------------------------------------------------------------------------
@pytest.mark.parametrize(("image", "check"), [
    (np.full((256, 256), 0, np.uint8), "blank"),
    (np.full((300, 200), 255, np.uint8), "blank"),
    (np.clip(np.random.default_rng(0).normal(128, 1.0, (256, 256)), 0, 255).astype(np.uint8), "near_constant"),
    (np.where(np.random.default_rng(1).random((256, 256)) < 0.95, 255, 120).astype(np.uint8), "saturated"),
    (np.where(np.random.default_rng(2).random((256, 256)) < 0.95, 0, 120).astype(np.uint8), "underexposed"),
    (np.random.default_rng(3).integers(0, 256, (40, 300), dtype=np.uint8), "tiny"),
    (np.pad(np.random.default_rng(4).integers(0, 256, (120, 110), dtype=np.uint8), ((0, 180), (0, 210)), constant_values=255), "framed"),
])
def test_quality_checks_refuse_blank_saturated_tiny_and_near_constant_images(image, check):
    problem = quality_problem(image)
    assert problem is not None and problem[0] == check
    refusal = quality_refusal(image, {"quality": dict(QUALITY_DEFAULTS)})
    assert refusal is not None and refusal.kind == "quality" and refusal.reason.startswith("image rejected: ")


def test_quality_checks_pass_xray_like_images_and_apply_only_when_the_contract_has_them():
    for seed in range(5):
        assert quality_problem(_cxr_like(seed=seed)) is None
        # collimation borders leave more than the limit: a CXR with black margins on two sides is not "framed"
        assert quality_problem(np.pad(_cxr_like(seed=seed), ((60, 0), (0, 60)))) is None
    blank = np.zeros((256, 256), np.uint8)
    assert quality_refusal(blank, {"temperature": 1.0}) is None  # no quality block: the model decides
    assert quality_problem(blank[:, :100], {"min_side": 128})[0] == "tiny"  # the block's own numbers win
    block = quality_block([_cxr_like(seed=s) for s in range(4)] + [blank])
    assert block["checked_on"] == {"images": 5, "refused": {"blank": 1}}


# --- OOD threshold and scores --------------------------------------------------------------------
def _logits(n: int, rng: np.random.Generator, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian classes in logit space; ``shift`` moves every point away (an OOD population)."""
    means = np.array([[4.0, -1, -2], [-1, 4, -2], [-2, -1, 4]])
    y = rng.integers(0, 3, n)
    cov = np.array([[1.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.0]])
    return means[y] + rng.multivariate_normal(np.zeros(3), cov, n) + shift, y


def test_threshold_fitted_at_95_tpr_keeps_95_tpr_on_held_out_images_within_binomial_bounds():
    rng = np.random.default_rng(7)
    z_train, y_train = _logits(900, rng)
    z_val, _ = _logits(400, rng)
    z_test, _ = _logits(4000, rng)
    spec = fit_ood(z_train, y_train, z_val, 3, "logit_mahalanobis", tpr=0.95)
    accepted = int(np.sum(ood_scores(z_test, spec) <= spec["threshold"]))
    # exchangeable scores: the accepted count of a split-conformal threshold from n validation images is
    # beta-binomial(n_test, k, n + 1 - k) with k = ceil((n + 1) * tpr): its 99.9% interval, not a guess
    k = math.ceil(401 * 0.95)
    dist = betabinom(len(z_test), k, 401 - k)
    assert dist.ppf(0.0005) <= accepted <= dist.ppf(0.9995)
    assert 0.92 <= accepted / len(z_test) <= 0.98
    assert spec["n_fit"] == 900 and spec["n_threshold"] == 400 and 0.03 <= spec["val_refused"] <= 0.06


def test_a_logit_only_score_needs_only_a_threshold_and_keeps_its_tpr():
    rng = np.random.default_rng(11)
    z_val, _ = _logits(400, rng)
    z_test, _ = _logits(4000, rng)
    spec = fit_ood(np.zeros((0, 3)), np.zeros(0, int), z_val, 3, "energy")
    assert set(spec) >= {"method", "threshold"} and "means" not in spec
    k = math.ceil(401 * 0.95)
    dist = betabinom(len(z_test), k, 401 - k)
    assert dist.ppf(0.0005) <= int(np.sum(ood_scores(z_test, spec) <= spec["threshold"])) <= dist.ppf(0.9995)


def test_threshold_at_tpr_is_the_conformal_order_statistic():
    s = np.arange(1, 21, dtype=float)  # 20 scores: ceil(21 * 0.95) = 20th smallest
    assert threshold_at_tpr(s, 0.95) == 20.0
    assert threshold_at_tpr(s, 0.5) == 11.0  # ceil(10.5) = 11th
    assert threshold_at_tpr(s[:5], 0.95) == 5.0  # too few: the largest


def test_mahalanobis_on_logits_refuses_a_far_population_and_recovers_the_class_means():
    rng = np.random.default_rng(3)
    z_train, y_train = _logits(3000, rng)
    g = fit_logit_gaussians(z_train, y_train, 3)
    assert np.allclose(g["means"], [[4, -1, -2], [-1, 4, -2], [-2, -1, 4]], atol=0.15)
    z_in, _ = _logits(500, rng)
    z_out, _ = _logits(500, rng, shift=np.array([6.0, 6.0, 6.0]))
    spec = {**g, "method": "logit_mahalanobis", "threshold": 10.0}
    s_in, s_out = ood_scores(z_in, spec), ood_scores(z_out, spec)
    assert auroc(s_in, s_out) > 0.99 and fpr_at_tpr(s_in, s_out) < 0.01
    assert auroc(s_out, s_in) < 0.01  # the direction matters: larger = less like training
    refusal = ood_refusal(z_out[0], None, spec)
    assert refusal is not None and refusal.kind == "ood" and refusal.reason.startswith("not a chest X-ray (score ")
    assert refusal.reason.endswith("): no prediction") and refusal.score > refusal.threshold


def test_auroc_counts_ties_half():
    assert auroc(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == pytest.approx(0.5)
    assert auroc(np.array([0.0, 0.0]), np.array([1.0, 1.0])) == 1.0


def test_an_ood_block_that_does_not_fit_the_model_is_refused_with_a_clear_error():
    with pytest.raises(OodSpecError, match="do not fit 3 logits"):
        ood_scores(np.zeros((1, 3)), {"method": "logit_mahalanobis", "means": [[0, 0]], "precision": [[1, 0], [0, 1]]})
    with pytest.raises(OodSpecError, match="not one of"):
        ood_scores(np.zeros((1, 3)), {"method": "vim"})


def test_the_decision_refuses_before_any_label():
    rng = np.random.default_rng(5)
    z_train, y_train = _logits(600, rng)
    z_val, _ = _logits(200, rng)
    block = {"schema": "edgecxr.decision/1", "temperature": 1.5,
             "ood": fit_ood(z_train, y_train, z_val, 3), "quality": dict(QUALITY_DEFAULTS)}
    v = decide(np.array([30.0, 30.0, 30.0]), ("A", "B", "C"), block)
    assert v.action == "refuse" and v.label is None and v.line().startswith("not a chest X-ray")
    v = decide(np.array([4.0, -1.0, -2.0]), ("A", "B", "C"), block)
    assert v.action != "refuse" and v.label == "A"
    json.dumps(block)  # a contract stores it as JSON


# --- the OOD head inside the graph ------------------------------------------------------------------
def test_the_ood_head_keeps_probabilities_and_carries_the_score_in_the_logits_mean():
    import torch

    from edgecxr.decide.ood_head import attach, fit_numbers, raw_scores
    from edgecxr.models.registry import CXRClassifier

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (3, 40))
    y = rng.integers(0, 3, 600)
    feats = centers[y] + rng.normal(0, 1, (600, 40))
    model = CXRClassifier(torch.nn.Identity(), 40, 3, dropout=0.0).eval()
    x = torch.from_numpy(np.concatenate([feats[:50], rng.normal(0, 9, (20, 40))])).float()  # 50 in, 20 far out
    with torch.no_grad():
        before = model(x).double().numpy()
    numbers = fit_numbers(feats, y, 3, dims=16, transform="none")
    attach(model, numbers)
    with torch.no_grad():
        after = model(x).double().numpy()
    soft = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)  # noqa: E731
    assert np.allclose(soft(before), soft(after), atol=1e-5)  # labels, temperature and sets are untouched
    r = ood_scores(after, {"method": "feature_mahalanobis"})
    want = np.clip(raw_scores(x.double().numpy(), numbers) / numbers["scale"], 0, numbers["cap"])
    assert np.allclose(r, want, rtol=1e-4, atol=1e-4)
    assert np.quantile(r[:50], 0.5) < 1.0 and np.allclose(r[50:], numbers["cap"], atol=1e-5)  # far points saturate at the cap
    assert numbers["dims"] == 16 and np.quantile(raw_scores(feats, numbers) / numbers["scale"], 0.95) == pytest.approx(1.0)


@pytest.mark.parametrize("transform", ["none", "sqrt", "l2", "sqrt_l2"])
def test_every_feature_transform_scores_the_same_in_the_graph_as_in_numpy(transform):
    import torch

    from edgecxr.decide.ood_head import attach, fit_numbers, raw_scores
    from edgecxr.models.registry import CXRClassifier

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    feats = np.maximum(0.0, rng.normal(0, 1, (3, 64))[y] + rng.normal(0, 0.7, (400, 64)))  # ReLU-sparse, like pooled features
    feats[0] = 0.0  # an all-zero vector: unit length must not turn it into NaN
    numbers = fit_numbers(feats, y, 3, dims=24, transform=transform)
    model = attach(CXRClassifier(torch.nn.Identity(), 64, 3, dropout=0.0).eval(), numbers)
    with torch.no_grad():
        r = ood_scores(model(torch.from_numpy(feats).float()).double().numpy(), {"method": "feature_mahalanobis"})
    want = np.clip(raw_scores(feats, numbers) / numbers["scale"], 0, numbers["cap"])
    assert numbers["transform"] == transform and np.all(np.isfinite(r))
    assert np.allclose(r, want, rtol=1e-3, atol=1e-3)


def test_unit_length_transforms_ignore_the_feature_scale_and_raw_ones_do_not():
    """Why sqrt_l2 is the default: a brighter or larger image scales the pooled features;
    only the direction of the feature vector should say whether it is a CXR."""
    from edgecxr.decide.ood_head import fit_numbers, raw_scores

    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 400)
    feats = np.maximum(0.0, rng.normal(0, 1, (3, 32))[y] + rng.normal(0, 0.5, (400, 32))) + 0.1
    for transform, invariant in (("l2", True), ("sqrt_l2", True), ("none", False), ("sqrt", False)):
        numbers = fit_numbers(feats, y, 3, dims=12, transform=transform)
        same = np.allclose(raw_scores(feats[:20], numbers), raw_scores(3.0 * feats[:20], numbers), rtol=1e-6)
        assert same == invariant, transform


def test_a_head_stored_before_transforms_existed_still_scores_raw_features():
    from edgecxr.decide.ood_head import fit_numbers, raw_scores

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    feats = rng.normal(0, 1, (3, 16))[y] + rng.normal(0, 1, (300, 16))
    numbers = fit_numbers(feats, y, 3, dims=8, transform="none")
    old = {k: v for k, v in numbers.items() if k != "transform"}
    assert np.array_equal(raw_scores(feats, old), raw_scores(feats, numbers))


# --- the bare runner ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calibrated_onnx(probe_models, tmp_path_factory):
    """The probe MobileNetV2 (synthetic CXRs) calibrated by ``edgecxr calibrate`` (temperature,
    conformal sets, OOD head and quality block), then exported to ONNX as convert does it."""
    from helpers import run_cli

    from edgecxr.convert.formats.onnx.export import export_fp32, onnx_contract
    from edgecxr.device.formats import write_contract
    from edgecxr.models.factory import load_model

    folder = tmp_path_factory.mktemp("ood_onnx")
    ckpt = folder / "probe.pt"
    shutil.copy(probe_models[0], ckpt)
    run_cli("calibrate", str(ckpt), "--coverage", "0.8", "--quiet")  # 9 validation images: 0.95 cannot be certified
    model, contract = load_model(str(ckpt))
    path = folder / "probe_fp32.onnx"
    export_fp32(model, onnx_contract(contract, "fp32"), str(path))
    write_contract(str(path), onnx_contract(contract, "fp32"))  # convert writes it after verification
    return path


def test_convert_carries_each_int8_files_temperature_over_and_refits_its_cuts(calibrated_onnx, tmp_path):
    """INT8 rounding shifts the score and the probabilities. A file that answers as its
    checkpoint does on the validation images gets the checkpoint's T times the scale rounding
    gave its logits, and keeps the conformal threshold; one that answers differently gets T and
    qhat refitted afresh. Either way its two cuts are its own (unfamiliar at the same TPR; not a
    chest X-ray at the same margin over its largest validation score, or the checkpoint's cut
    rescaled by the ratio of the two unfamiliar cuts, whichever is higher), under the
    checkpoint's head; its self-test still passes."""
    from helpers import run_cli

    from edgecxr.data.imageset import load_images
    from edgecxr.decide.fit import fit_temperature
    from edgecxr.decide.ood_cuts import not_cxr_cut
    from edgecxr.decide.ood_fit import threshold_at_tpr
    from edgecxr.decide.transfer import MIN_AGREEMENT, logit_scale
    from edgecxr.device.ood import ood_scores as scores_of
    from edgecxr.eval.evaluate import resolve_samples
    from edgecxr.models.runtime import open_model

    ckpt = calibrated_onnx.parent / "probe.pt"
    out = tmp_path / "export"
    run_cli("convert", str(ckpt), "--out", str(out), "--int8", "--formats", "onnx", "--keep-degraded", "--quiet")
    report = json.loads((out / "convert_report.json").read_text())
    step = next(s for s in report["artifacts"] if s["precision"] == "int8")
    int8 = open_model(str(out / step["file"]))
    checkpoint = open_model(str(ckpt))
    before, after = checkpoint.contract.decision, int8.contract.decision
    index = resolve_samples(int8.contract, None, "val", progress=False)
    val = load_images(index, index.of_split("val"), int8.contract.preprocess, progress=False)
    z, z_ref = int8.predict(val.x), checkpoint.predict(val.x)
    ood, unfamiliar, scores = after["ood"], after["unfamiliar"], scores_of(z, after["ood"])
    refit = step["details"]["decision_refit"]
    if np.mean(z.argmax(1) == z_ref.argmax(1)) >= MIN_AGREEMENT:
        assert "transferred" in refit and after["conformal"]["qhat"] == before["conformal"]["qhat"]
        assert after["temperature"] == pytest.approx(before["temperature"] * logit_scale(z_ref, z), rel=1e-4)
    else:
        assert "transfer_refused" in refit and "transferred" not in refit
        assert after["temperature"] == pytest.approx(fit_temperature(z, val.y)["temperature"], rel=1e-6)
    assert unfamiliar["threshold"] == pytest.approx(threshold_at_tpr(scores, unfamiliar["tpr"]), abs=1e-6)
    carried = before["ood"]["threshold"] * unfamiliar["threshold"] / before["unfamiliar"]["threshold"]  # the checkpoint's cut, rescaled
    carried = min(carried, (scores.max() + ood["cap"]) / 2)
    assert ood["threshold"] == pytest.approx(max(not_cxr_cut(scores, ood["margin"], ood["cap"]), carried), abs=1e-6)
    assert ood["threshold"] >= unfamiliar["threshold"] and ood["val_refused"] == 0.0  # equal on a 9-image split
    assert refit["ood_threshold_from_checkpoint"] == pytest.approx(before["ood"]["threshold"])
    assert {k: ood[k] for k in ("scale", "dims", "features")} == {k: before["ood"][k] for k in ("scale", "dims", "features")}
    assert "decision_refit" not in next(s for s in report["artifacts"] if s["precision"] == "fp32")["details"]
    proc = run_bare_runner(tmp_path, "--model", str(out / step["file"]), "--selftest")
    assert proc.returncode == 0 and "self-test PASS" in proc.stdout, proc.stdout + proc.stderr


class _CoarseModel(torch.nn.Module):
    """A classifier whose pooled features are the image at 4 x 4: drawn patterns land far from CXRs."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())
        self.head = torch.nn.Linear(48, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def test_int8_calibration_with_drawn_anchors_keeps_the_score_beyond_the_calibration_images(calibrated_onnx, tmp_path):
    """Calibrated on CXRs alone, the INT8 score path ends where the CXRs' scores end and a far
    image saturates there (at the not-a-CXR cut); with convert's drawn anchors it keeps its FP32
    distance. Both files quantized from the same FP32 ONNX on the same images; the model's OOD
    head is fitted on those images' features as calibrate fits it."""
    from edgecxr.convert.calibration import load_calibration
    from edgecxr.convert.formats.onnx.export import export_fp32, onnx_contract
    from edgecxr.convert.formats.onnx.quantize import quantize_int8
    from edgecxr.convert.score_anchors import carried_score, drawn_patterns, with_score_anchors
    from edgecxr.decide.ood_head import attach, fit_numbers, raw_scores
    from edgecxr.device.preprocess import normalize, prepare_gray
    from edgecxr.models.factory import load_model

    probe, contract = load_model(str(calibrated_onnx.parent / "probe.pt"))
    calib = load_calibration(contract, progress=False)
    lines: list[str] = []
    assert with_score_anchors(calib, probe, lines.append) is calib  # its head puts no pattern beyond the CXRs
    assert "0 drawn" in lines[0]

    torch.manual_seed(0)
    model = _CoarseModel().eval()
    feats = model.backbone(torch.from_numpy(calib.x)).detach().double().numpy()
    numbers = fit_numbers(feats, calib.y, 3, dims=8, transform="none")
    numbers.update(scale=float(np.percentile(raw_scores(feats, numbers), 95)), cap=4.0)
    attach(model, numbers)
    anchored = with_score_anchors(calib, model, lines.append)
    assert "range anchors" in lines[1] and len(anchored.nchw()) > len(calib.nchw()) == len(anchored.x), lines
    far = np.stack([normalize(prepare_gray(g, calib.spec), calib.spec) for g in drawn_patterns().values()])
    fp32_far, fp32_cxr = carried_score(model, far).max(), carried_score(model, calib.x).max()
    assert fp32_far > 1.5 * fp32_cxr
    fp32 = tmp_path / "coarse.onnx"
    export_fp32(model, onnx_contract(contract, "fp32"), str(fp32))  # as convert exports
    scores = {}
    for name, x in (("cxr_only", calib.nchw()), ("anchored", anchored.nchw())):
        quantize_int8(str(fp32), str(tmp_path / f"{name}.onnx"), x)
        import onnxruntime as ort

        z = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": far})[0]
        scores[name] = float((-z.mean(axis=1)).max())
    assert scores["cxr_only"] < 1.25 * fp32_cxr, scores  # saturated near the calibration images' largest score
    assert scores["anchored"] > 0.8 * fp32_far, scores


def _bare_runner(tmp_path, *args: str) -> str:
    proc = run_bare_runner(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_a_photo_is_refused_by_the_bare_runner(calibrated_onnx, synthetic_data, tmp_path):
    from PIL import Image
    from skimage import data as skdata

    from edgecxr.device.contract import read_onnx_contract
    from edgecxr.device.image_io import load_gray
    from edgecxr.device.preprocess import preprocess
    from edgecxr.models.runtime import open_model

    block = read_onnx_contract(str(calibrated_onnx)).decision
    assert block["ood"]["method"] == "feature_mahalanobis" and block["quality"]["checked_on"]["refused"] == {}
    disc = block["ood"]["not_cxr"]  # calibrate fitted the discriminator the graph carries (the default: 600 drawn images)
    assert disc["n_drawn"] == 600 and disc["n_degraded"] > 0 and disc["val_max_distance"] <= block["ood"]["threshold"] + 1e-9
    photo = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(photo)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(blank)
    # a synthetic CXR the workstation accepts: the runner must accept it too
    backend = open_model(str(calibrated_onnx))
    cxrs = sorted(synthetic_data.glob("*/*.png"))[::10]
    x = np.stack([preprocess(load_gray(str(f)), backend.contract.preprocess) for f in cxrs])
    scores = ood_scores(backend.predict(x), block["ood"])
    cxr = cxrs[int(np.argmin(scores))]

    text = _bare_runner(tmp_path, "--model", str(calibrated_onnx), "--image", str(photo))
    assert "not a chest X-ray (score " in text and "): no prediction" in text
    rows = {}
    for f in (photo, blank, cxr):
        out = _bare_runner(tmp_path, "--model", str(calibrated_onnx), "--image", str(f), "--json")
        rows[f.name] = json.loads(out.strip().splitlines()[-1])
    assert rows["astronaut.png"]["action"] == "refuse" and rows["astronaut.png"]["label"] is None
    assert rows["astronaut.png"]["refusal"]["kind"] == "ood"
    assert rows["astronaut.png"]["refusal"]["score"] > rows["astronaut.png"]["refusal"]["threshold"]
    assert rows["blank.png"]["action"] == "refuse" and rows["blank.png"]["refusal"]["kind"] == "quality"
    assert rows["blank.png"]["decision"].startswith("image rejected: blank")
    assert rows[cxr.name]["action"] in ("answer", "refer") and "refusal" not in rows[cxr.name]
    # a folder: refused rows are marked in the CSV, counted in the summary, and the exit code stays 0
    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in (photo, blank, cxr):
        shutil.copy(f, folder / f.name)
    _bare_runner(tmp_path, "--model", str(calibrated_onnx), "--dir", str(folder), "--csv", str(tmp_path / "out.csv"))
    import csv

    with open(tmp_path / "out.csv", encoding="utf-8") as fh:
        table = {r["file"]: r for r in csv.DictReader(fh)}
    assert table["astronaut.png"]["action"] == "refuse" and table["astronaut.png"]["label"] == ""
    assert table["blank.png"]["action"] == "refuse" and table[cxr.name]["action"] in ("answer", "refer")


def test_a_checkpoint_naming_the_feature_score_without_its_head_is_refused(probe_models, tmp_path):
    """Without the head the score read back as -mean(logits) is always 0: every image would pass."""
    from edgecxr.decide.store import write_decision
    from edgecxr.errors import EdgecxrError
    from edgecxr.models.factory import load_model

    ckpt = tmp_path / "probe.pt"
    shutil.copy(probe_models[0], ckpt)
    write_decision(str(ckpt), {"schema": "edgecxr.decision/1", "temperature": 1.0,
                               "ood": {"method": "feature_mahalanobis", "threshold": 1.0}})
    with pytest.raises(EdgecxrError, match="carries no OOD head"):
        load_model(str(ckpt))


# --- two questions: not a chest X-ray (refuse) and unfamiliar chest X-ray (refer) ------------------
def _two_question_block() -> dict:
    """The feature score rides in the logits' mean: refuse far beyond the validated CXRs, refer in between."""
    return {"schema": "edgecxr.decision/1", "temperature": 1.0,
            "conformal": {"method": "lac", "coverage": 0.9, "qhat": 0.6},
            "ood": {"method": "feature_mahalanobis", "threshold": 3.0},
            "unfamiliar": {"method": "feature_mahalanobis", "threshold": 1.0}}


def test_an_unfamiliar_chest_xray_is_referred_with_its_score_and_a_far_image_refused():
    block = _two_question_block()
    centred = np.array([6.0, -3.0, -3.0])
    familiar = decide(centred - 0.5, ("A", "B", "C"), block)
    unfamiliar = decide(centred - 2.0, ("A", "B", "C"), block)
    far = decide(centred - 3.5, ("A", "B", "C"), block)
    assert familiar.action == "answer" and familiar.reason_kind == "answer" and familiar.reason == "A"
    assert unfamiliar.action == "refer" and unfamiliar.label is None and unfamiliar.reason_kind == "unfamiliar"
    assert unfamiliar.reason == "unfamiliar image (score 2 > 1): refer"
    assert unfamiliar.prediction_set == ("A",)  # the set is still shown beside the referral
    assert far.action == "refuse" and far.reason_kind == "not_cxr" and far.reason.startswith("not a chest X-ray (score 3.5 > 3)")
    d = unfamiliar.to_dict()
    assert d["reason_kind"] == "unfamiliar" and d["refusal"]["score"] == pytest.approx(2.0) and d["refusal"]["threshold"] == 1.0


def test_a_site_block_moves_the_unfamiliar_cut_and_may_raise_but_never_lower_the_not_a_cxr_cut():
    from edgecxr.device.decision import in_force

    block = {**_two_question_block(), "site": {"name": "clinic", "unfamiliar": {"threshold": 2.5}, "ood": {"threshold": 0.1}}}
    force = in_force(block)
    assert force["unfamiliar"]["threshold"] == 2.5 and force["ood"]["threshold"] == 3.0
    assert decide(np.array([6.0, -3.0, -3.0]) - 2.0, ("A", "B", "C"), block).action == "answer"
    raised = in_force({**block, "site": {"name": "clinic", "ood": {"threshold": 3.8}}})
    assert raised["ood"]["threshold"] == 3.8 and decide(np.array([6.0, -3.0, -3.0]) - 3.5, ("A", "B", "C"), raised).action == "refer"


def test_reason_shares_count_every_kind_once():
    from edgecxr.device.decision import REASON_KINDS, reason_shares

    s = reason_shares(["answer", "answer", "uncertain", "not_cxr"])
    assert set(s) == set(REASON_KINDS) and s["answer"] == 0.5 and s["unfamiliar"] == 0.0 and sum(s.values()) == pytest.approx(1.0)


def test_a_rounded_files_cut_carries_the_checkpoints_over_by_its_score_scale_never_below_its_own():
    from edgecxr.decide.ood_cuts import carried_over_cut

    own = {"threshold": 1.48, "val_max": 1.48, "cap": 4.0, "rule": "1 x the largest of 300 validation scores", "val_refused": 0.0}
    moved = carried_over_cut(own, 1.61, 1.05)  # the INT8 file's scores run 5% above the checkpoint's
    assert moved["threshold"] == pytest.approx(1.6905) and "whichever is higher" in moved["rule"] and moved["val_refused"] == 0.0
    assert carried_over_cut(own, 1.30, 1.05) is own  # its own cut already higher: kept
    assert carried_over_cut(own, 3.9, 1.5)["threshold"] == pytest.approx((1.48 + 4.0) / 2)  # never at or past the clip


def test_the_not_a_cxr_cut_keeps_every_validation_cxr_and_stays_below_the_head_clip():
    from edgecxr.decide.ood_cuts import fit_cuts, not_cxr_cut
    from edgecxr.errors import EdgecxrError

    val = np.linspace(0.2, 1.5, 300)
    assert not_cxr_cut(val, 2.0, cap=8.0) == pytest.approx(3.0)
    assert not_cxr_cut(val, 2.0, cap=2.5) == pytest.approx(2.0)  # halfway between the largest score and the clip
    with pytest.raises(EdgecxrError, match="reach the OOD head's clip"):
        not_cxr_cut(np.array([0.5, 3.0]), 2.0, cap=3.0)
    with pytest.raises(EdgecxrError, match="at least 1"):
        not_cxr_cut(val, 0.5)
    z = -np.repeat(val[:, None], 3, axis=1)  # the head's score rides in the logits' mean
    cuts = fit_cuts({"method": "feature_mahalanobis", "cap": 8.0}, z, 0.95, 2.0)
    assert cuts["ood"]["threshold"] == pytest.approx(3.0) and cuts["ood"]["val_refused"] == 0.0
    assert cuts["unfamiliar"]["val_referred"] <= 0.05 and cuts["unfamiliar"]["threshold"] < cuts["ood"]["threshold"]
