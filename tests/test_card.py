"""eval reports calibration and conformal coverage, and the model card renders from
whatever a run has: nothing but the model, or eval, convert and OOD results too."""
from __future__ import annotations

import json

from click.testing import CliRunner
from decision_fixtures import BLOCK, toy_onnx

from edgecxr.data.synthetic import SYNTHETIC_CLASSES


def _invoke(command, *args: str):
    res = CliRunner().invoke(command, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_eval_reports_calibration_before_and_after_and_coverage_per_class(synthetic_data, tmp_path):
    from edgecxr.cli.eval import eval_command

    model = toy_onnx(str(tmp_path / "toy_fp32.onnx"), BLOCK, SYNTHETIC_CLASSES, {"data_root": str(synthetic_data)})
    out = tmp_path / "eval"
    text = _invoke(eval_command, model, "--split", "all", "--out", str(out), "--bootstrap", "50", "--quiet")
    rep = json.loads((out / "eval.json").read_text())
    cal = rep["calibration"]
    assert cal["temperature"] == BLOCK["temperature"]
    for when in ("before", "after"):
        for key in ("ece", "adaptive_ece", "brier", "nll"):
            lo, hi = cal[when][key]["ci95"]
            assert lo <= hi and 0 <= cal[when][key]["value"]
    assert cal["before"]["nll"]["value"] != cal["after"]["nll"]["value"]
    conf = rep["conformal"]
    assert set(conf["per_class"]) == set(SYNTHETIC_CLASSES) and sum(c["n"] for c in conf["per_class"].values()) == rep["n_images"]
    sizes = [len(p["prediction_set"]) for p in rep["predictions"]]
    assert abs(sum(sizes) / len(sizes) - conf["mean_set_size"]) < 1e-9
    assert (out / "reliability.png").stat().st_size > 1000
    # each image's probabilities are what the device shows: Backend.probabilities = softmax(logits / T)
    from edgecxr.device.backends import open_backend
    from edgecxr.device.image_io import load_gray
    from edgecxr.device.preprocess import preprocess

    backend = open_backend(model)
    first = rep["predictions"][0]
    x = preprocess(load_gray(str(synthetic_data / first["file"])), backend.contract.preprocess)[None]
    assert abs(backend.probabilities(x)[0] - first["probabilities"]).max() < 2e-6
    assert "ECE (15 bins)" in text and "conformal lac sets" in text and "coverage" in text


def test_card_without_optional_inputs_says_what_is_not_measured(synthetic_data, tmp_path):
    from edgecxr.cli.card import card_command

    model = toy_onnx(str(tmp_path / "toy_fp32.onnx"), None, SYNTHETIC_CLASSES, {"data_root": str(synthetic_data)})
    _invoke(card_command, model, "--out", str(tmp_path / "card.md"))
    card = (tmp_path / "card.md").read_text()
    assert "Not for clinical use" in card and "paediatric" in card and "burnt-in markers" in card
    assert "Not measured: run `edgecxr eval" in card and "run `edgecxr calibrate" in card
    assert "refusal rates: not measured" in card and "Per-format changes" in card


def test_card_with_eval_and_ood_results_reports_their_numbers_and_commands(synthetic_data, tmp_path):
    from edgecxr.cli.card import card_command
    from edgecxr.cli.eval import eval_command

    model = toy_onnx(str(tmp_path / "toy_fp32.onnx"), BLOCK, SYNTHETIC_CLASSES, {"data_root": str(synthetic_data)})
    _invoke(eval_command, model, "--split", "all", "--out", str(tmp_path / "eval_toy_all"), "--bootstrap", "50", "--quiet")
    ood = tmp_path / "ood_eval.json"
    ood.write_text(json.dumps({"command": "python scripts/reproduce/ood_eval.py toy", "groups": {"photos": {"auroc": 0.9987, "refused": 0.995}}}))
    _invoke(card_command, model, "--out", str(tmp_path / "card.md"))
    card = (tmp_path / "card.md").read_text()
    rep = json.loads((tmp_path / "eval_toy_all" / "eval.json").read_text())
    assert f"{rep['accuracy']:.4f}" in card and f"{rep['calibration']['after']['ece']['value']:.4f}" in card
    assert f"{rep['conformal']['mean_set_size']:.3f}" in card
    assert "temperature T = 2.0000" in card and "--split all" in card
    assert "groups.photos.auroc: 0.9987" in card and "python scripts/reproduce/ood_eval.py toy" in card


def test_the_card_renders_the_ood_evaluation_as_a_table_per_file_and_group():
    from edgecxr.card.render import ood_eval_table

    report = {"tpr": 0.95, "cpu": {"model": "AMD EPYC", "arch": "x86_64", "int8_features": ["avx2", "avx512_vnni"]},
              "results": [{"model": "runs/x/export/m_int8.tflite", "runtime": "ai-edge-litert 2.3.0",
                           "test_cxr": {"n": 300, "refused": 0.047},
                           "groups": {"photos": {"n": 156, "refused": 1.0, "auroc": 0.9993, "fpr_at_95tpr": 0.0},
                                      "blank": {"n": 24, "refused": 1.0}}}]}
    lines = ood_eval_table(report)
    assert lines[0].startswith("| file | test CXRs refused | photos: AUROC / FPR@95 / refused | blank:")
    assert lines[2] == "| `m_int8.tflite` (ai-edge-litert 2.3.0) | 4.7% | 0.9993 / 0.000 / 100.0% | - / - / 100.0% |"
    assert "avx512_vnni" in lines[-1]
