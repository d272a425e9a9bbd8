"""The intended-use gate: DICOM header rules that only ever add refusals.

The matrix test prints every header variant with the result it got (the issue's "gate
matrix"); the runner tests check that ``--image``/``--dir`` apply the same gate to DICOM files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from dicom_fixtures import CR, CT, DX_PROC, MR, UNKNOWN_SOP, make_dataset, synthetic_gray, write

from edgecxr.device.intended_use import (
    ACCEPTED,
    DEFAULT_BLOCK,
    REFUSED,
    UNVERIFIED,
    IntendedUseError,
    age_years,
    block_in_force,
    check,
    load_block,
    validate_block,
)

pytest_plugins = ["bench_fixtures"]  # export_dir: a converted TFLite with its contract

# (name, header overrides for make_dataset, expected status, expected words in the line)
MATRIX = [
    ("DX PA adult", {}, ACCEPTED, "header checked"),
    ("DX AP adult", {"view": "AP"}, ACCEPTED, "header checked"),
    ("CR PA adult", {"sop_class": CR, "modality": "CR"}, ACCEPTED, "header checked"),
    ("DX for processing", {"sop_class": DX_PROC}, ACCEPTED, "header checked"),
    ("MONOCHROME1", {"photometric": "MONOCHROME1"}, ACCEPTED, "header checked"),
    ("16 bit", {"bits": 16}, ACCEPTED, "header checked"),
    ("lateral LL", {"view": "LL"}, REFUSED, "refused: ViewPosition LL is not PA or AP"),
    ("child 6 years", {"age": "006Y"}, REFUSED, "refused: PatientAge 006Y (6 years) is outside 18-120 years"),
    ("infant 8 months", {"age": "008M"}, REFUSED, "refused: PatientAge 008M"),
    ("CT", {"sop_class": CT, "modality": "CT", "view": None}, REFUSED, "refused: Modality CT is not CR or DX or DR"),
    ("MR", {"sop_class": MR, "modality": "MR", "view": None}, REFUSED, "refused: Modality MR is not CR or DX or DR"),
    ("knee DX", {"body_part": "KNEE"}, REFUSED, "refused: BodyPartExamined KNEE is not CHEST"),
    ("unknown SOP class", {"sop_class": UNKNOWN_SOP}, REFUSED, f"refused: SOPClassUID {UNKNOWN_SOP} is not CR Image Storage"),
    ("no ViewPosition", {"view": None}, UNVERIFIED, "intended use unverified: no ViewPosition"),
    ("no age, no body part", {"age": None, "body_part": None}, UNVERIFIED,
     "intended use unverified: no BodyPartExamined, no PatientAge"),
]


@pytest.mark.parametrize("name,overrides,status,words", MATRIX, ids=[m[0] for m in MATRIX])
def test_gate_matrix_each_header_variant_gets_its_result(name, overrides, status, words):
    result = check(make_dataset(synthetic_gray(0, 16), **overrides), DEFAULT_BLOCK, "default")
    print(f"GATE {name:<22} -> {result.status:<10} {result.line()}")
    assert result.status == status
    assert words in result.line()


def test_missing_required_tag_refuses_and_missing_optional_never_accepts():
    ds = make_dataset(synthetic_gray(0, 16))
    del ds.Modality
    assert check(ds, DEFAULT_BLOCK).line() == "refused: no Modality in the DICOM header"
    ds = make_dataset(synthetic_gray(0, 16), view=None, age=None)
    result = check(ds, DEFAULT_BLOCK)
    assert result.status == UNVERIFIED and result.missing == ("ViewPosition", "PatientAge")


def test_age_strings_convert_to_years():
    assert age_years("045Y") == 45 and age_years("006M") == 0.5 and age_years("nonsense") is None
    assert abs(age_years("014D") - 14 / 365.25) < 1e-12 and age_years("052W") == pytest.approx(1.0, abs=0.01)


def test_regex_and_range_rules_and_case_insensitive_values():
    block = validate_block({"rules": [{"field": "BodyPartExamined", "regex": "CHEST|THORAX"},
                                      {"field": "Rows", "range": [64, 4096]}]})
    assert check({"BodyPartExamined": "thorax", "Rows": 2048}, block).status == ACCEPTED
    assert check({"BodyPartExamined": "ABDOMEN", "Rows": 2048}, block).line() == \
        "refused: BodyPartExamined ABDOMEN does not match CHEST|THORAX"
    assert check({"BodyPartExamined": "CHEST", "Rows": 32}, block).line() == "refused: Rows 32 is outside 64-4096"


@pytest.mark.parametrize("block,words", [
    ({}, "needs a 'rules' list"),
    ({"rules": [{"allowed": ["PA"]}]}, "needs a 'field'"),
    ({"rules": [{"field": "ViewPosition"}]}, "give 'allowed', 'regex' or 'range'"),
    ({"rules": [{"field": "ViewPosition", "allowed": ["PA"], "missing": "accept"}]}, "'missing' must be one of"),
    ({"rules": [{"field": "PatientAge", "range": [90, 18]}]}, "'range' must be [low, high]"),
    ({"rules": [{"field": "X", "regex": "("}]}, "bad regex"),
    ({"rules": [{"field": "X", "allowed": ["a"], "typo": 1}]}, "unknown key"),
])
def test_bad_blocks_are_one_line_errors(block, words):
    with pytest.raises(IntendedUseError, match=None) as err:
        validate_block(block)
    assert words in str(err.value)


def test_contract_block_is_used_and_defaults_apply_without_one(tmp_path):
    f = tmp_path / "iu.json"
    f.write_text(json.dumps({"intended_use": {"rules": [{"field": "ViewPosition", "allowed": ["PA"]}]}}))
    block = load_block(str(f))
    assert block_in_force({"intended_use": block}) == (block, "contract")
    assert block_in_force(None) == (DEFAULT_BLOCK, "default")
    assert check({"ViewPosition": "AP"}, block).line() == "refused: ViewPosition AP is not PA"


def _runner(*args: str) -> tuple[int, str, str]:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "device" / "edgecxr_runner.py"), *args], capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_runner_image_and_dir_apply_the_gate_to_dicom(export_dir, tmp_path):
    model = str(export_dir / "mobilenet_v2_int8.tflite")
    gray = synthetic_gray(3, 64)
    files = tmp_path / "dicom"
    write(make_dataset(gray), files / "pa.dcm")
    write(make_dataset(gray, view="LL"), files / "lateral.dcm")
    write(make_dataset(gray, view=None), files / "noview.dcm")
    rc, out, err = _runner("--model", model, "--image", str(files / "lateral.dcm"))
    assert rc == 0 and "refused: ViewPosition LL is not PA or AP" in out, err
    rc, out, err = _runner("--model", model, "--dir", str(files), "--json", "--csv", str(tmp_path / "p.csv"))
    assert rc == 0, err
    rows = {r["file"]: r for r in map(json.loads, out.splitlines())}
    assert rows["lateral.dcm"]["action"] == "refuse" and rows["lateral.dcm"]["probabilities"] is None
    assert rows["pa.dcm"]["intended_use"]["status"] == ACCEPTED and rows["pa.dcm"]["probabilities"]
    assert rows["noview.dcm"]["intended_use"]["line"] == "intended use unverified: no ViewPosition"
    assert rows["noview.dcm"]["probabilities"] == rows["pa.dcm"]["probabilities"]  # the gate only adds refusals


def test_calibrate_writes_the_intended_use_block_into_the_contract(trained_run, tmp_path):
    import shutil

    from helpers import run_cli

    from edgecxr.decide.store import read_contract

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    rules = tmp_path / "iu.json"
    rules.write_text(json.dumps({"rules": [{"field": "ViewPosition", "allowed": ["PA"]},
                                           {"field": "PatientAge", "range": [16, 100]}]}))
    run_cli("calibrate", str(run), "--intended-use", str(rules), "--coverage", "0.8", "--quiet")
    block = read_contract(str(run / "best.pt")).decision["intended_use"]
    assert block["rules"][0] == {"field": "ViewPosition", "allowed": ["PA"]} and block["schema"] == "edgecxr.intended_use/1"
    run_cli("calibrate", str(run), "--coverage", "0.8", "--quiet")  # recalibrating keeps the block
    assert read_contract(str(run / "best.pt")).decision["intended_use"] == block
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rules": [{"field": "ViewPosition"}]}))
    proc = run_cli("calibrate", str(run), "--intended-use", str(bad), "--coverage", "0.8", "--quiet", check=False)
    assert proc.returncode != 0 and "give 'allowed', 'regex' or 'range'" in proc.stderr and "Traceback" not in proc.stderr



def test_a_gated_dicom_record_carries_its_sop_and_study_uids_for_the_audit_line(tmp_path):
    """serve, --image and --dir hand the audit log the instance's UIDs from the header the gate already read."""
    from decision_fixtures import toy_onnx
    from dicom_fixtures import make_dataset, synthetic_gray, write

    from edgecxr.device.backends import open_backend
    from edgecxr.device.classify import Classifier
    from edgecxr.device.gated import classify_path, gated_record

    ds = make_dataset(synthetic_gray())
    path = write(ds, tmp_path / "a.dcm")
    clf = Classifier(open_backend(toy_onnx(str(tmp_path / "toy_fp32.onnx"), None)))
    pred, gate, _gray = classify_path(clf, str(path))
    rec = gated_record(pred, gate, 3)
    assert rec["sop_instance_uid"] == str(ds.SOPInstanceUID) and rec["study_instance_uid"] == str(ds.StudyInstanceUID)
