"""``edgecxr convert`` / ``debug-quant``: every artifact made, verified, carrying its contract,
INT8 refused without real calibration images, the --max-drop gate, clear errors for bad files.

One full six-artifact conversion (ONNX + TFLite, FP32/FP16/INT8) of the shared
``trained_run`` checkpoint runs once through the real CLI; the other tests use the
Python API or click's runner in-process, ONNX only, to stay fast.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import run_cli

from edgecxr.errors import EdgecxrError

SIX = [("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8")]


def _cli(*args: str):
    from edgecxr.cli.main import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def full_export(trained_run: Path, tmp_path_factory) -> tuple[Path, dict, str]:
    """All six artifacts of the trained MobileNetV2 (32 px), through the real CLI (a relative --out)."""
    out = tmp_path_factory.mktemp("export") / "exp"
    proc = run_cli("convert", str(trained_run / "best.pt"), "--out", os.path.relpath(out), "--int8", "--fp16", "--quiet")
    report = json.loads((out / "convert_report.json").read_text())
    return out, report, proc.stdout


# --- the formats table ----------------------------------------------------------------------

def test_artifact_names_round_trip_through_the_formats_table():
    from edgecxr.convert.formats import artifact_name, export_formats, parse_artifact_name, parse_formats

    assert [f.name for f in export_formats()][:2] == ["onnx", "tflite"]  # the source format first; later rows follow
    for fmt, prec in SIX:
        name = artifact_name("mobilenet_v3_small", fmt, prec)
        parsed = parse_artifact_name("/x/" + name)
        assert (parsed.arch, parsed.format, parsed.precision) == ("mobilenet_v3_small", fmt, prec)
    assert artifact_name("mobilenet_v2", "tflite", "int8") == "mobilenet_v2_int8.tflite"
    assert parse_artifact_name("best.pt") is None and parse_artifact_name("model.onnx") is None
    assert [f.name for f in parse_formats("tflite, onnx")] == ["onnx", "tflite"]
    with pytest.raises(EdgecxrError, match="unknown format"):
        parse_formats("onnx,coreml")


# --- the full conversion ----------------------------------------------------------------------

def test_convert_writes_all_six_artifacts_verified_with_report(full_export):
    out, report, stdout = full_export
    files = sorted(p.name for p in out.iterdir())
    for fmt, prec in SIX:
        assert f"mobilenet_v2_{prec}.{fmt}" in files
    for prec in ("fp32", "fp16", "int8"):
        assert f"mobilenet_v2_{prec}.tflite.json" in files
    assert "convert_report.json" in files and "convert_report.md" in files
    assert not [f for f in files if f.startswith(".")], f"temporary files left behind: {files}"
    assert len(report["artifacts"]) == 6
    for art in report["artifacts"]:
        assert art["status"] == "ok", art
        assert art["bytes"] == os.path.getsize(out / art["file"])
        v = art["verify"]
        assert v["images"] == report["verification"]["images"] > 0
        for key in ("max_abs_logit_diff", "top1_agreement", "accuracy", "macro_f1", "delta_macro_f1_pp"):
            assert key in v
        if art["precision"] == "fp32":
            assert v["max_abs_logit_diff"] < 1e-3 and v["top1_agreement"] == 1.0
        if art["format"] == "tflite":  # repeated zero-point vectors stored once, in the verified file
            assert (art["details"]["shared_quant_bytes"] > 0) == (art["precision"] == "int8")
    cal = report["calibration"]
    assert cal["images"] == sum(cal["class_counts"].values()) >= 16 and cal["origin"].startswith("the train split")
    assert f"calibration: {cal['images']} real images" in stdout  # number used and class counts are printed
    assert "mobilenet_v2_int8.tflite" in (out / "convert_report.md").read_text()


def test_every_artifact_carries_its_contract(full_export, trained_run):
    from edgecxr.device.backends import import_interpreter
    from edgecxr.device.contract import read_onnx_contract, read_sidecar
    from edgecxr.models.checkpoint import file_sha256
    from edgecxr.models.factory import load_model

    out, _report, _ = full_export
    _, ckpt_contract = load_model(str(trained_run / "best.pt"))
    sha = file_sha256(str(trained_run / "best.pt"))
    for fmt, prec in SIX:
        path = str(out / f"mobilenet_v2_{prec}.{fmt}")
        c = read_onnx_contract(path) if fmt == "onnx" else read_sidecar(path)
        assert c is not None, path
        assert (c.format, c.precision, c.arch) == (fmt, prec, "mobilenet_v2")
        assert c.classes == ckpt_contract.classes and c.preprocess == ckpt_contract.preprocess
        assert c.source["checkpoint_sha256"] == sha
        for tool in ("torch", "onnx", "onnxruntime", "onnxsim", "onnx2tf", "tensorflow"):
            assert tool in c.versions
        if fmt == "onnx":
            assert c.input.layout == "NCHW" and c.input.dtype == "float32" and list(c.input.shape[1:]) == [3, 32, 32]
        else:
            assert c.input.layout == "NHWC" and list(c.input.shape) == [1, 32, 32, 3]
        if prec == "int8":
            assert c.source["calibration"]["images"] >= 16
    # the INT8 TFLite contract holds the real integer IO parameters of the file
    Interpreter, _ = import_interpreter()
    path = str(out / "mobilenet_v2_int8.tflite")
    interp = Interpreter(model_path=path)
    c = read_sidecar(path)
    for spec, det in ((c.input, interp.get_input_details()[0]), (c.output, interp.get_output_details()[0])):
        assert spec.dtype == "int8" == np.dtype(det["dtype"]).name
        assert spec.scale == pytest.approx(det["quantization"][0]) and spec.zero_point == det["quantization"][1]
        assert spec.name == det["name"]


def test_eval_accepts_all_six_artifacts(full_export, tmp_path):
    out, report, _ = full_export
    by_file = {a["file"]: a for a in report["artifacts"]}
    for fmt, prec in SIX:
        name = f"mobilenet_v2_{prec}.{fmt}"
        res = _cli("eval", str(out / name), "--bootstrap", "0", "--quiet", "--out", str(tmp_path / name))
        assert res.exit_code == 0, res.output
        ev = json.loads((tmp_path / name / "eval.json").read_text())
        assert ev["accuracy"] == pytest.approx(by_file[name]["verify"]["accuracy"])
        assert ev["selftest"]["passed"] is True and ev["cpu"]["int8_features"] is not None


def test_every_artifact_passes_its_selftest_here_and_int8_on_emulated_avx2(full_export):
    """Golden vectors in every file; the bare runner checks them natively, and the INT8 files of
    both formats (default portable target) on an emulated AVX2-only CPU."""
    import subprocess
    import sys

    from emulation import run_on_haswell

    out, report, _ = full_export
    runner = str(Path(__file__).resolve().parents[1] / "device" / "edgecxr_runner.py")
    for fmt, prec in SIX:
        path = str(out / f"mobilenet_v2_{prec}.{fmt}")
        art = next(a for a in report["artifacts"] if a["file"] == os.path.basename(path))
        assert 0 < art["details"]["golden_bytes"] < 1_000_000  # 8 images at the input size: well under a megabyte
        proc = subprocess.run([sys.executable, runner, "--model", path, "--selftest"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "self-test PASS on 8 golden images" in proc.stdout, proc.stdout + proc.stderr
    for fmt in ("onnx", "tflite"):
        proc = run_on_haswell([runner, "--model", str(out / f"mobilenet_v2_int8.{fmt}"), "--selftest", "--json"])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])["selftest"]
        assert result["passed"] and result["top1_agreement_vs_host"] == 1.0, result


# --- refusals and gates ---------------------------------------------------------------------

def _without_data_sources(ckpt: Path, dest: Path) -> Path:
    from edgecxr.models.checkpoint import save_checkpoint
    from edgecxr.models.factory import load_model

    model, contract = load_model(str(ckpt))
    save_checkpoint(str(dest), model, replace(contract, source={}))
    return dest


def test_int8_refused_without_real_calibration_images(trained_run, synthetic_data, tmp_path):
    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint

    ckpt = _without_data_sources(trained_run / "best.pt", tmp_path / "nodata.pt")
    out = tmp_path / "exp"
    res = _cli("convert", str(ckpt), "--out", str(out), "--int8", "--formats", "onnx", "--quiet")
    assert res.exit_code == 2
    assert "INT8 needs real calibration images" in res.output and "--calib-data" in res.output
    assert "Traceback" not in res.output
    assert not out.exists(), "refused before writing anything"
    # a folder with too few readable images is refused too, never padded with made-up data
    few = tmp_path / "few"
    for label in sorted(p.name for p in synthetic_data.iterdir() if p.is_dir())[:2]:
        (few / label).mkdir(parents=True)
        for src in sorted((synthetic_data / label).iterdir())[:3]:
            shutil.copy(src, few / label / src.name)
    with pytest.raises(EdgecxrError, match="only 6 readable images"):
        convert_checkpoint(str(ckpt), str(out), ConvertOptions(int8=True, formats=("onnx",), calib_data=str(few), verify=False),
                           progress=False, echo=lambda s: None)


def test_max_drop_needs_verification_images(trained_run, tmp_path):
    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint

    ckpt = _without_data_sources(trained_run / "best.pt", tmp_path / "nodata.pt")
    with pytest.raises(EdgecxrError, match="--max-drop needs verification images"):
        convert_checkpoint(str(ckpt), str(tmp_path / "exp"), ConvertOptions(formats=("onnx",), max_drop=1.0),
                           progress=False, echo=lambda s: None)


def test_max_drop_gate_fails_on_a_damaged_model(probe_models, synthetic_data, tmp_path):
    good, bad = probe_models
    # --keep-degraded: this test is about --max-drop alone (the probe is too fragile for the default tolerance)
    common = ["--int8", "--formats", "onnx", "--calib-data", str(synthetic_data), "--verify-data", str(synthetic_data),
              "--calib-n", "32", "--max-drop", "40", "--keep-degraded", "--quiet"]
    res_bad = _cli("convert", str(bad), "--out", str(tmp_path / "bad"), *common)
    assert res_bad.exit_code == 3, res_bad.output
    assert "--max-drop 40: FAILED" in res_bad.output and "mobilenet_v2_int8.onnx" in res_bad.output
    rep = json.loads((tmp_path / "bad" / "convert_report.json").read_text())
    fp32 = next(a for a in rep["artifacts"] if a["precision"] == "fp32")
    assert fp32["verify"]["macro_f1"] == 1.0 and fp32["verify"]["max_abs_logit_diff"] < 1e-2  # float is intact
    assert rep["gate"]["passed"] is False
    res_good = _cli("convert", str(good), "--out", str(tmp_path / "good"), *common)
    assert res_good.exit_code == 0, res_good.output
    assert "--max-drop 40: passed" in res_good.output


def test_a_degraded_artifact_is_never_ok_and_fails_convert_unless_kept(probe_models, synthetic_data, tmp_path):
    _, bad = probe_models
    common = ["--int8", "--formats", "onnx", "--calib-data", str(synthetic_data), "--verify-data", str(synthetic_data),
              "--calib-n", "32", "--quiet"]
    res = _cli("convert", str(bad), "--out", str(tmp_path / "strict"), *common)
    assert res.exit_code == 3, res.output
    assert "DEGRADED" in res.output and "mobilenet_v2_int8.onnx" in res.output and "--keep-degraded" in res.output
    rep = json.loads((tmp_path / "strict" / "convert_report.json").read_text())
    int8 = next(a for a in rep["artifacts"] if a["precision"] == "int8")
    fp32 = next(a for a in rep["artifacts"] if a["precision"] == "fp32")
    assert int8["status"] == "degraded" and "top-1 agreement" in int8["reason"] and fp32["status"] == "ok"
    assert rep["degraded"] and rep["tolerance"] == {"min_top1_agreement": 0.95, "max_macro_f1_drop_pp": 2.0}
    assert rep["host_cpu"]["int8_features"] and rep["int8_target"]["name"] == "portable"
    kept = _cli("convert", str(bad), "--out", str(tmp_path / "kept"), *common, "--keep-degraded")
    assert kept.exit_code == 0, kept.output
    rep = json.loads((tmp_path / "kept" / "convert_report.json").read_text())
    assert next(a for a in rep["artifacts"] if a["precision"] == "int8")["status"] == "degraded"  # kept, never "ok"


def test_degradation_needs_two_flips_and_names_what_is_out_of_tolerance():
    from edgecxr.convert.verify import degradation

    v = {"images": 20, "top1_agreement": 0.95, "delta_macro_f1_pp": -5.0}  # one flip in 20: never condemns a file
    assert degradation(v) is None
    v = {"images": 300, "top1_agreement": 0.757, "delta_macro_f1_pp": -20.6}  # the AVX2 saturation measured on real CXRs
    assert "top-1 agreement 75.7% < 95%" in degradation(v) and "-20.60 pp" in degradation(v)
    assert degradation({"images": 300, "top1_agreement": 0.997, "delta_macro_f1_pp": -0.33}) is None


# --- keep-float and debug-quant ---------------------------------------------------------------

def test_keep_float_leaves_the_named_node_unquantized(probe_models, synthetic_data, tmp_path):
    import onnx

    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint

    good, _ = probe_models
    base = ConvertOptions(int8=True, formats=("onnx",), calib_data=str(synthetic_data), calib_n=16, verify=False)
    kw = dict(progress=False, echo=lambda s: None)
    rep = convert_checkpoint(str(good), str(tmp_path / "kf"), replace(base, keep_float=["/head/head.1/Gemm"]), **kw)
    assert rep["artifacts"][1]["status"] == "ok" and rep["keep_float"] == ["/head/head.1/Gemm"]
    graph = onnx.load(str(tmp_path / "kf" / "mobilenet_v2_int8.onnx")).graph
    float_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    gemm = next(n for n in graph.node if n.name == "/head/head.1/Gemm")
    assert gemm.input[1] in float_weights  # the weight stays float; the bias sits behind an int32 DequantizeLinear
    assert gemm.input[2].endswith("_float_bias")  # so ONNX Runtime does not requantize the layer (float_guard.py)
    conv = next(n for n in graph.node if n.op_type == "Conv")
    assert conv.input[1].endswith("_DequantizeLinear_Output")  # the rest is quantized
    rep = convert_checkpoint(str(good), str(tmp_path / "kf2"), replace(base, keep_float=["no_such_node"]), **kw)
    int8 = rep["artifacts"][1]
    assert int8["status"] == "failed" and "no node of that name" in int8["reason"]
    assert rep["artifacts"][0]["status"] == "ok"  # the failed format does not stop the others


def test_debug_quant_lists_tensors_worst_first(probe_models, synthetic_data, tmp_path):
    good, _ = probe_models
    out = tmp_path / "dq.json"
    res = _cli("debug-quant", str(good), "--data", str(synthetic_data), "--n", "24", "--top", "5", "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    sqnr = [r["sqnr_local_db"] for r in result["tensors"]]
    assert len(sqnr) > 50 and sqnr == sorted(sqnr)
    assert {r["op_type"] for r in result["tensors"]} >= {"Conv", "Add"}
    assert "worst first" in res.output and result["tensors"][0]["node"] in res.output


# --- bad files --------------------------------------------------------------------------------

def test_truncated_or_corrupt_model_files_give_one_line_errors(full_export, trained_run, tmp_path):
    from edgecxr.convert.debug import debug_quant
    from edgecxr.models.runtime import open_model

    out, _, _ = full_export
    ckpt = tmp_path / "trunc.pt"
    data = (trained_run / "best.pt").read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])
    res = _cli("convert", str(ckpt), "--out", str(tmp_path / "exp"))
    assert res.exit_code == 2 and "not a readable checkpoint" in res.output
    assert "Traceback" not in res.output
    for name in ("mobilenet_v2_fp32.onnx", "mobilenet_v2_int8.tflite"):
        bad = tmp_path / name
        raw = (out / name).read_bytes()
        bad.write_bytes(raw[: len(raw) // 2])
        if name.endswith(".tflite"):
            shutil.copy(out / (name + ".json"), tmp_path / (name + ".json"))
        with pytest.raises(EdgecxrError, match="not a loadable"):
            open_model(str(bad))
    garbage = tmp_path / "garbage_fp32.onnx"
    garbage.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(EdgecxrError, match="not a valid ONNX model"):
        debug_quant(str(garbage))


def test_tflite_worker_is_offline_and_finds_onnxsim():
    import sys

    from edgecxr.convert.formats.tflite.convert import worker_env

    env = worker_env()
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert env["HTTPS_PROXY"].startswith("http://127.0.0.1:") and "NO_PROXY" not in env




def test_float_only_tflite_conversion_needs_no_calibration_images(trained_run, tmp_path):
    """Without --int8 there are no calibration images; onnx2tf still gets its offline sample file."""
    out = tmp_path / "float_only"
    proc = run_cli("convert", str(trained_run / "best.pt"), "--out", str(out), "--formats", "tflite", "--no-verify", "--quiet")
    assert (out / "mobilenet_v2_fp32.tflite").stat().st_size > 0, proc.stdout
    report = json.loads((out / "convert_report.json").read_text())
    assert [(a["format"], a["precision"], a["status"]) for a in report["artifacts"]] == [("onnx", "fp32", "ok"), ("tflite", "fp32", "ok")]


def test_convert_writes_each_contract_once_and_opens_each_file_once(trained_run, synthetic_data, tmp_path, monkeypatch):
    """One door, one write: every contract of a ``convert --int8 --formats tflite`` is built in
    memory (production, INT8 refit, golden vectors) and written once, after verification, with
    each file opened by one runtime session; the files then carry complete contracts."""
    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint
    from edgecxr.device.formats import read_contract
    from edgecxr.device.runtimes.litert import TFLiteBackend
    from edgecxr.device.runtimes.onnxruntime_cpu import OnnxBackend
    from edgecxr.device.runtimes.spec import DeviceFormat

    writes: dict[str, int] = {}
    opens: dict[str, int] = {}

    def counting(cls, method, counter, key):
        real = getattr(cls, method)

        def wrapper(*args, **kwargs):
            name = os.path.basename(str(args[key]))
            counter[name] = counter.get(name, 0) + 1
            return real(*args, **kwargs)
        monkeypatch.setattr(cls, method, wrapper)

    counting(DeviceFormat, "write_contract", writes, 1)
    counting(TFLiteBackend, "__init__", opens, 1)
    counting(OnnxBackend, "__init__", opens, 1)
    out = tmp_path / "exp"
    rep = convert_checkpoint(str(trained_run / "best.pt"), str(out), ConvertOptions(int8=True, formats=("tflite",), calib_n=16),
                             progress=False, echo=lambda s: None)
    made = sorted(a["file"] for a in rep["artifacts"] if a["status"] in ("ok", "degraded"))
    assert "mobilenet_v2_int8.tflite" in made and "mobilenet_v2_fp32.onnx" in made  # the ONNX export is the source
    assert writes == {name: 1 for name in made}, f"contract writes per file: {writes}"
    assert opens == {name: 1 for name in made}, f"runtime sessions per file: {opens}"
    int8 = read_contract(str(out / "mobilenet_v2_int8.tflite"))
    assert int8.selftest and int8.selftest["images"] and int8.precision == "int8"  # golden vectors in the one write
    assert "mobilenet_v2_int8.tflite" in {a["file"] for a in rep["artifacts"] if a["details"].get("decision_refit")} or \
        not (int8.decision or {}).get("ood")  # the refit, when there is one, went into the same write
