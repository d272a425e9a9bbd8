"""The decision layer: temperature scaling fixes a miscalibrated model, split-conformal
sets cover what they promise, the block survives every format's contract, and the
device runner states its set or its "refer" decision on a real ONNX model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from decision_fixtures import BLOCK, CLASSES, png, toy_contract, toy_onnx
from scipy.stats import binom

from edgecxr.decide.fit import coverage_report, fit_conformal, fit_temperature, split_halves
from edgecxr.decide.reliability import adaptive_ece, brier, calibration_metrics, ece, nll
from edgecxr.device.contract import Contract
from edgecxr.device.decision import CONFORMAL_METHODS, calibrated_probabilities, decide, prediction_set
from edgecxr.errors import EdgecxrError


def _calibrated_toy(n: int, seed: int, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true label distribution: labels are drawn from it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    p = calibrated_probabilities(z, None)
    y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return z, np.minimum(y, k - 1)


def test_temperature_scaling_lowers_ece_of_an_overconfident_toy_model():
    scale = 3.0  # the toy model's logits are 3x too large: overconfident
    z_fit, y_fit = _calibrated_toy(4000, seed=1)
    z_test, y_test = _calibrated_toy(4000, seed=2)
    fit = fit_temperature(scale * z_fit, y_fit)
    before = calibrated_probabilities(scale * z_test, None)
    after = calibrated_probabilities(scale * z_test, fit)
    assert ece(after, y_test) < ece(before, y_test) / 2
    assert adaptive_ece(after, y_test) < adaptive_ece(before, y_test) and nll(after, y_test) < nll(before, y_test)
    assert brier(after, y_test) < brier(before, y_test)
    assert abs(fit["temperature"] - scale) / scale < 0.15  # it recovers the factor that miscalibrated it
    assert fit["nll_after"] < fit["nll_before"] and not fit["at_bound"]


def test_temperature_stays_1_when_the_fit_images_hold_no_error():
    z, y = _calibrated_toy(200, seed=6)
    right = z.argmax(1) == y  # only the images the toy model gets right: nothing says how far to soften
    fit = fit_temperature(z[right], y[right])
    assert fit["temperature"] == 1.0 and fit["not_identifiable"] and fit["errors"] == 0


def test_ece_matches_a_hand_computation_and_its_ci_contains_it():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    y = np.array([0, 1, 1, 1])
    # bins of width 1/15: 0.9 -> bin 13, 0.8 -> 11, 0.7 -> 10, 0.6 -> 8; each bin one image
    want = (abs(0.9 - 1) + abs(0.8 - 0) + abs(0.7 - 1) + abs(0.6 - 0)) / 4
    assert ece(probs, y) == pytest.approx(want)
    assert adaptive_ece(probs, y) == pytest.approx(want)  # 4 images, 4 equal-mass bins of one
    m = calibration_metrics(probs, y, n_boot=200)
    assert all(v["ci95"][0] <= v["ci95"][1] for v in m.values())
    for key in ("brier", "nll"):  # means: their percentile CI holds the point estimate
        assert m[key]["ci95"][0] <= m[key]["value"] <= m[key]["ci95"][1]


@pytest.mark.parametrize("method", CONFORMAL_METHODS)
def test_conformal_coverage_on_synthetic_data_is_within_its_binomial_bounds(method):
    coverage, n_cal, n_test = 0.9, 1000, 5000
    z_cal, y_cal = _calibrated_toy(n_cal, seed=3)
    z_test, y_test = _calibrated_toy(n_test, seed=4)
    block = fit_conformal(calibrated_probabilities(z_cal, None), y_cal, coverage, method)
    got = coverage_report(calibrated_probabilities(z_test, None), y_test, list(CLASSES), block)["coverage"]
    # Split conformal: E[coverage] lies in [1-a, 1-a + 1/(n+1)]; the realised value varies with
    # the calibration draw (Beta, sd sqrt(c(1-c)/(n+2))) and the test draw (binomial).
    hi_mean = coverage + 1 / (n_cal + 1)
    sd_cal = math.sqrt(coverage * (1 - coverage) / (n_cal + 2))
    lo = binom.ppf(0.0005, n_test, coverage - 3.3 * sd_cal) / n_test
    hi = binom.ppf(0.9995, n_test, hi_mean + 3.3 * sd_cal) / n_test
    assert lo <= got <= hi, (got, lo, hi)


def test_conformal_refuses_a_coverage_too_few_images_can_certify():
    z, y = _calibrated_toy(10, seed=5)
    with pytest.raises(EdgecxrError, match="cannot certify"):
        fit_conformal(calibrated_probabilities(z, None), y, 0.95)


def test_validation_halves_are_disjoint_stratified_and_reproducible():
    from edgecxr.data.folders import Sample

    samples = [Sample(f"{c}/{i}.png", c, "val") for c in CLASSES for i in range(11)]
    a, b = split_halves(samples)
    assert not {s.file for s in a} & {s.file for s in b} and len(a) + len(b) == len(samples)
    assert all(abs(sum(s.label == c for s in a) - sum(s.label == c for s in b)) <= 1 for c in CLASSES)
    assert split_halves(list(reversed(samples))) == (a, b)


def test_a_set_of_two_classes_is_a_refer_decision_and_one_class_an_answer():
    block = {"temperature": 1.0, "conformal": {"method": "lac", "coverage": 0.9, "qhat": 0.6}}  # keep p >= 0.4
    sure = decide(np.array([6.0, 0.0, -6.0]), CLASSES, block)
    torn = decide(np.array([1.0, 1.0, -6.0]), CLASSES, block)
    assert sure.action == "answer" and sure.label == "A" and sure.line() == "A (set {A})"
    assert sure.reason == "A" and sure.reason_kind == "answer"
    assert torn.action == "refer" and torn.label is None and torn.line() == "uncertain between A and B: refer"
    assert torn.reason_kind == "uncertain" and torn.to_dict()["reason"] == "uncertain between A and B: refer"
    unsure = decide(np.zeros(3), CLASSES, block)  # 1/3 each: no class reaches p >= 0.4
    assert unsure.action == "refer" and unsure.prediction_set == () and unsure.line().startswith("no class probable enough")
    assert unsure.reason_kind == "uncertain"
    assert prediction_set(torn.probabilities, CLASSES, None) == ("A",)  # no block: the plain top-1


def test_a_filled_lac_set_names_the_classes_an_image_is_split_between_and_changes_no_answer():
    from edgecxr.decide.fit import fit_conformal
    from edgecxr.device.decision import set_mask

    block = {"temperature": 1.0, "conformal": {"method": "lac", "coverage": 0.9, "qhat": 0.2, "empty": "fill"}}  # keep p >= 0.8
    split = decide(np.log(np.array([0.5, 0.42, 0.08])), CLASSES, block)  # no class reaches 0.8; A and B hold 0.92
    even = decide(np.zeros(3), CLASSES, block)  # 1/3 each: all three are needed to reach 0.8
    sure = decide(np.log(np.array([0.85, 0.1, 0.05])), CLASSES, block)
    assert split.action == "refer" and split.prediction_set == ("A", "B") and split.line() == "uncertain between A and B: refer"
    assert even.prediction_set == ("A", "B", "C") and sure.action == "answer" and sure.prediction_set == ("A",)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3) * 0.7, 500)
    plain = set_mask(p, {k: v for k, v in block["conformal"].items() if k != "empty"})
    filled = set_mask(p, block["conformal"])
    assert np.all(filled >= plain) and filled.any(axis=1).all()  # a superset, never empty
    singles = plain.sum(axis=1) == 1
    assert np.array_equal(filled[singles], plain[singles]) and np.all(filled[~plain.any(axis=1)].sum(axis=1) >= 2)
    assert fit_conformal(p, p.argmax(axis=1), 0.9)["empty"] == "fill" and "empty" not in fit_conformal(p, p.argmax(axis=1), 0.9, "aps")


# ---------------------------------------------------------------- contracts and the runner
def test_decision_block_round_trips_through_onnx_and_tflite_contracts(tmp_path):
    from edgecxr.convert.formats import get_format
    from edgecxr.decide.store import read_contract, write_decision
    from edgecxr.device.backends import open_backend
    from edgecxr.device.formats import write_contract

    onnx_path = toy_onnx(str(tmp_path / "toy_fp32.onnx"), None)
    write_decision(onnx_path, BLOCK)
    assert read_contract(onnx_path).decision == BLOCK
    assert open_backend(onnx_path).contract.decision == BLOCK  # what the device reads, through onnxruntime
    tfl = get_format("tflite")
    tfl_path = str(tmp_path / "toy_int8.tflite")
    write_contract(tfl_path, toy_contract(None).with_io(format="tflite", precision="int8", input=toy_contract(None).input,
                                                           output=toy_contract(None).output))
    write_decision(tfl_path, BLOCK)
    assert tfl.read_contract(tfl_path).decision == BLOCK
    assert json.loads(open(tfl_path + ".json").read())["decision"]["conformal"]["qhat"] == BLOCK["conformal"]["qhat"]
    moved = Contract.from_json(read_contract(onnx_path).to_json()).with_io(format="tflite", precision="fp16",
                                                                            input=toy_contract(None).input, output=toy_contract(None).output)
    assert moved.decision == BLOCK  # a format change keeps it: it describes the model, not the file


def test_decision_block_is_kept_in_the_checkpoint_and_carried_by_its_contract(tmp_path):
    import torch

    from edgecxr.decide.store import read_contract, write_decision
    from edgecxr.models.checkpoint import save_checkpoint

    path = str(tmp_path / "m.pt")
    save_checkpoint(path, torch.nn.Linear(2, 3), toy_contract(None))
    write_decision(path, {**BLOCK, "ood": {"kept": True}})
    assert read_contract(path).decision["ood"] == {"kept": True} and read_contract(path).decision["temperature"] == 2.0
    assert torch.load(path, weights_only=True)["state_dict"]["weight"].shape == (3, 2)


def test_runner_prints_the_set_for_a_clear_image_and_refers_a_torn_one(tmp_path, capsys):
    from edgecxr.device.edgecxr_runner import main as runner_main

    model = toy_onnx(str(tmp_path / "toy_fp32.onnx"), BLOCK)
    bright, grey = png(tmp_path / "bright.png", 250), png(tmp_path / "grey.png", 128)
    assert runner_main(["--model", model, "--image", bright]) == 0
    header, line = capsys.readouterr().out.strip().splitlines()
    assert "temperature 2" in header and "conformal lac" in header
    assert line.startswith(f"{bright}: A  [A ") and "set {A}" in line and "refer" not in line
    assert runner_main(["--model", model, "--image", grey]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "uncertain between A and B: refer" in line and line.startswith(f"{grey}: A  [")
    assert runner_main(["--model", model, "--image", grey, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["action"] == "refer" and rec["prediction_set"] == ["A", "B"]
    assert rec["reason"] == "uncertain between A and B: refer" and rec["reason_kind"] == "uncertain"
    # the probabilities printed are the calibrated ones: softmax(logits / T)
    z = np.array([8 * ((128 / 255 - 0.5) / 0.25), 0.0, -10.0])
    want = calibrated_probabilities(z, BLOCK)
    assert np.allclose([rec["probabilities"][c] for c in CLASSES], want, atol=1e-5)


def test_bench_calibration_from_saved_softmax_equals_evals_from_logits():
    from edgecxr.decide.report import bench_markdown, decision_sections, from_probabilities

    z, y = _calibrated_toy(300, seed=7)
    block = {"temperature": 1.7, "conformal": {"method": "lac", "coverage": 0.9, "qhat": 0.5}}
    from_logits = decision_sections(z, y, list(CLASSES), block, n_boot=100)
    from_probs = from_probabilities(calibrated_probabilities(z, None), y, list(CLASSES), block, n_boot=100)
    for when in ("before", "after"):
        for key, v in from_probs["calibration"][when].items():
            assert abs(v["value"] - from_logits["calibration"][when][key]["value"]) < 1e-9
    assert from_probs["conformal"]["coverage"] == from_logits["conformal"]["coverage"]
    table = bench_markdown([{"path": "/x/m_int8.tflite", "decision": from_probs}])
    assert "| m_int8.tflite | 1.700 |" in table and f"{from_probs['conformal']['coverage']:.3f}" in table
    # bench keeps the logits too: the device's reasons, counted as eval counts them
    reasons = from_logits["reasons"]
    assert reasons["n"] == 300 and sum(reasons["overall"].values()) == pytest.approx(1.0)
    assert reasons["overall"]["answer"] == pytest.approx(1 - from_logits["conformal"]["refer"])
    table = bench_markdown([{"path": "/x/m_int8.tflite", "decision": {**from_probs, "reasons": reasons}}])
    assert f"{100 * reasons['overall']['answer']:.1f}% / " in table


def test_per_class_conformal_covers_every_class_within_its_binomial_bounds():
    coverage, n_cal, n_test = 0.9, 3000, 6000
    z_cal, y_cal = _calibrated_toy(n_cal, seed=8)
    z_test, y_test = _calibrated_toy(n_test, seed=9)
    z_cal[:, 2] -= 1.0  # class C rarer and harder: marginal coverage would short-change it
    z_test[:, 2] -= 1.0
    block = fit_conformal(calibrated_probabilities(z_cal, None), y_cal, coverage, "lac", per_class=True)
    rep = coverage_report(calibrated_probabilities(z_test, None), y_test, list(CLASSES), block)
    for c, name in enumerate(CLASSES):
        n_c, m_c = int((y_cal == c).sum()), rep["per_class"][name]["n"]
        sd_cal = math.sqrt(coverage * (1 - coverage) / (n_c + 2))
        lo = binom.ppf(0.0005, m_c, coverage - 3.3 * sd_cal) / m_c
        hi = binom.ppf(0.9995, m_c, coverage + 1 / (n_c + 1) + 3.3 * sd_cal) / m_c
        assert lo <= rep["per_class"][name]["coverage"] <= hi, (name, rep["per_class"][name], lo, hi)
    assert len(block["qhat_per_class"]) == 3 and block["n_per_class"] == [int((y_cal == c).sum()) for c in range(3)]


CKPT_BLOCK = {"schema": "edgecxr.decision/1", "temperature": 1.3, "conformal": {"method": "lac", "coverage": 0.9, "qhat": 0.5, "n": 50}}


def _convert_with_block(trained_run, tmp_path, **precisions) -> tuple[dict, list[str]]:
    """Convert a copy of the two-epoch run carrying ``CKPT_BLOCK`` to ONNX; the report and the log lines."""
    import shutil

    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint
    from edgecxr.decide.store import write_decision

    ckpt = tmp_path / "best.pt"
    shutil.copy(trained_run / "best.pt", ckpt)
    write_decision(str(ckpt), CKPT_BLOCK)
    lines: list[str] = []
    rep = convert_checkpoint(str(ckpt), str(tmp_path / "export"), ConvertOptions(formats=("onnx",), **precisions),
                             progress=False, echo=lines.append)
    return rep, lines


def test_convert_carries_the_checkpoints_decision_block_and_reports_ece_change(trained_run, tmp_path):
    from edgecxr.decide.store import read_contract

    rep, lines = _convert_with_block(trained_run, tmp_path, fp16=True)
    assert any("from the checkpoint" in line for line in lines)
    onnx_files = [a for a in rep["artifacts"] if a["file"].endswith(".onnx")]
    assert len(onnx_files) == 2
    for a in onnx_files:
        assert read_contract(str(tmp_path / "export" / a["file"])).decision == CKPT_BLOCK
        cal = a["verify"]["calibration"]
        assert cal["temperature"] == 1.3 and set(cal) == {"raw", "scaled", "temperature"}
        assert abs(cal["scaled"]["delta"] - (cal["scaled"]["ece"] - cal["scaled"]["ece_reference"])) < 1e-12
    assert "Calibration against FP32" in (tmp_path / "export" / "convert_report.md").read_text()


def test_an_int8_refit_whose_temperature_hits_its_bound_keeps_the_checkpoints_numbers(trained_run, tmp_path):
    """The two-epoch run predicts one class: its validation NLL falls as T grows without limit,
    so a fresh refit of T on the INT8 file's outputs lands on the search bound and must not be
    taken. Convert itself carries the checkpoint's numbers over (the file answers as the
    checkpoint does): T times the logit scale, the conformal threshold kept."""
    from dataclasses import replace

    from edgecxr.decide.ood_fit import refit_decision
    from edgecxr.decide.store import read_contract
    from edgecxr.models.runtime import open_model

    rep, lines = _convert_with_block(trained_run, tmp_path, int8=True)
    int8 = next(a for a in rep["artifacts"] if a["precision"] == "int8")
    carried = read_contract(str(tmp_path / "export" / int8["file"])).decision
    refit = int8["details"]["decision_refit"]
    assert refit["agreement"] >= 0.95 and carried["conformal"]["qhat"] == CKPT_BLOCK["conformal"]["qhat"]
    assert carried["temperature"] == pytest.approx(1.3 * refit["logit_scale"], rel=1e-9)
    assert any("same answers as the checkpoint" in line and "conformal thresholds carried over" in line for line in lines)

    backend = open_model(str(tmp_path / "export" / int8["file"]))
    backend.contract = replace(backend.contract, decision=CKPT_BLOCK)
    block, numbers = refit_decision(backend)
    assert numbers == {"kept_checkpoint_temperature": "at the search bound"} and block == CKPT_BLOCK
