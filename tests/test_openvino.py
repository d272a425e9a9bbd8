"""OpenVINO: IR files converted at every precision and verified against PyTorch, the ONNX
file opened by OpenVINO as a second runtime, the Pi runner on an IR file, and a format
whose package is missing skipped with its pip command.

One conversion of the shared ``trained_run`` checkpoint (32 px) with the real
OpenVINO runtime and NNCF; INT8 is calibrated on the run's own (synthetic) images.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO not installed (pip install -r requirements.txt)")
pytest.importorskip("nncf", reason="NNCF not installed (pip install -r requirements.txt)")

from helpers import run_bare_runner

ROOT = Path(__file__).resolve().parents[1]
RUNNER = str(ROOT / "device" / "edgecxr_runner.py")


@pytest.fixture(scope="module")
def ov_export(trained_run: Path, tmp_path_factory) -> tuple[Path, dict]:
    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint

    out = tmp_path_factory.mktemp("ov") / "exp"
    rep = convert_checkpoint(str(trained_run / "best.pt"), str(out), ConvertOptions(formats=("openvino",), int8=True, fp16=True, threads=1),
                             progress=False, echo=lambda s: None)
    return out, rep


def test_openvino_ir_is_converted_at_every_precision_verified_and_carries_its_contract(ov_export):
    from edgecxr.convert.formats import find_artifacts, get_format
    from edgecxr.convert.verify import MIN_AGREEMENT
    from edgecxr.device.formats import model_bytes

    out, rep = ov_export
    arts = {a["precision"]: a for a in rep["artifacts"] if a["format"] == "openvino"}
    assert sorted(arts) == ["fp16", "fp32", "int8"]
    fmt = get_format("openvino")
    for precision, art in arts.items():
        xml = out / f"mobilenet_v2_{precision}.xml"
        assert art["status"] == "ok", art
        assert art["file"] == xml.name and (out / f"mobilenet_v2_{precision}.bin").exists()
        assert art["bytes"] == model_bytes(str(xml)) == xml.stat().st_size + (out / f"mobilenet_v2_{precision}.bin").stat().st_size
        assert art["verify"]["top1_agreement"] >= MIN_AGREEMENT and art["verify"]["runtime"].startswith("openvino")
        contract = fmt.read_contract(str(xml))  # from the XML's rt_info, no runtime
        assert (contract.format, contract.precision, contract.arch) == ("openvino", precision, "mobilenet_v2")
        assert contract.selftest["images"] and contract.versions["openvino"]
        assert fmt.graph_stats(str(xml))["weight_precision"] == precision
    assert arts["fp32"]["verify"]["max_abs_logit_diff"] < 1e-3  # float32 compute: f32 inference precision is forced
    assert "nncf" in fmt.read_contract(str(out / "mobilenet_v2_int8.xml")).versions
    assert [n.format for _, n in find_artifacts(str(out))].count("openvino") == 3


def test_openvino_ir_passes_its_own_selftest_in_the_runner(ov_export):
    out, _ = ov_export
    for precision in ("fp32", "fp16", "int8"):
        proc = subprocess.run([sys.executable, RUNNER, "--model", str(out / f"mobilenet_v2_{precision}.xml"), "--selftest",
                               "--threads", "1"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "self-test" in proc.stdout + proc.stderr


def test_the_onnx_file_opened_by_openvino_agrees_with_onnxruntime(ov_export, synthetic_data):
    from edgecxr.device.image_io import load_gray
    from edgecxr.device.preprocess import preprocess
    from edgecxr.models.runtime import open_model, runtimes_for

    onnx = str(ov_export[0] / "mobilenet_v2_fp32.onnx")
    assert runtimes_for(onnx) == ("onnxruntime", "openvino")[: len(runtimes_for(onnx))] and "openvino" in runtimes_for(onnx)
    ort, ov = open_model(onnx, 1), open_model(onnx, 1, runtime="openvino")
    assert (ort.runtime_name, ov.runtime_name) == ("onnxruntime", "openvino")
    assert ov.contract == ort.contract  # OpenVINO reads the contract from the ONNX metadata itself
    files = sorted(synthetic_data.rglob("*.png"))[::10]
    x = np.stack([preprocess(load_gray(str(f)), ort.contract.preprocess) for f in files])
    a, b = ort.predict(x), ov.predict(x)
    assert np.array_equal(a.argmax(1), b.argmax(1))
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_runner_classifies_an_image_with_the_openvino_runtime(ov_export, synthetic_data):
    image = sorted(synthetic_data.rglob("*.png"))[0]
    for model in ("mobilenet_v2_int8.xml", "mobilenet_v2_fp32.onnx"):
        proc = subprocess.run([sys.executable, RUNNER, "--model", str(ov_export[0] / model), "--runtime", "openvino", "--image",
                               str(image), "--json", "--threads", "2"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        (rec,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        assert rec["label"] in rec["probabilities"] and abs(sum(rec["probabilities"].values()) - 1) < 1e-4


def test_runner_names_the_package_when_openvino_is_missing(ov_export, tmp_path):
    proc = run_bare_runner(tmp_path, "--model", str(ov_export[0] / "mobilenet_v2_fp32.xml"), "--selftest", hide=("openvino",), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install openvino" in lines[0] and "Traceback" not in proc.stderr


# --- a format whose packages are missing ---------------------------------------------------------

def _ghost_format(requires: tuple[Any, ...]) -> Any:
    """A format run by the runtime ``ghost-rt`` (registered by the fixture), produced as a copy of the FP32 ONNX."""
    from edgecxr.convert.formats.base import ExportFormat
    from edgecxr.device.formats import DeviceFormat

    def produce(p, steps):
        for step in steps.values():
            p.run.do(step, lambda s=step: {"copied": shutil.copyfile(p.fp32_onnx, p.run.path(s))})

    return ExportFormat(device=DeviceFormat("ghost", ".ghost", ("ghost-rt",)), precisions=("fp32", "int8"), layout="NCHW",
                        description="a format for tests", options={}, marker="x", produce=produce,
                        graph_stats=lambda path: {}, requires=requires)


@pytest.fixture
def register_ghost():
    """``register_ghost(runtime_module, requires)``: the ghost format in both tables, removed afterwards."""
    from types import ModuleType

    from edgecxr.convert import formats
    from edgecxr.device import runtimes
    from edgecxr.device.formats import DeviceFormat, Runtime

    registered = []

    def register(module: str, requires: tuple[Any, ...] = ()) -> Any:
        fmt = _ghost_format(requires)
        ghost = ModuleType("ghost_runtime")
        ghost.RUNTIMES = (Runtime("ghost-rt", module, "pip install ghost-runtime", "a runtime for tests", opens=("ghost",),
                                  open=lambda path, threads: None),)
        ghost.FORMATS = (DeviceFormat("ghost", ".ghost"),)
        runtimes.register(ghost)
        formats.register(fmt)
        registered.append((fmt, ghost))
        return fmt

    yield register
    for fmt, ghost in registered:
        formats.FORMATS.remove(fmt)
        runtimes.unregister(ghost)


def test_a_format_whose_runtime_is_not_installed_is_skipped_with_its_pip_command(register_ghost, trained_run, tmp_path):
    from click.testing import CliRunner

    from edgecxr.cli.main import cli

    register_ghost("edgecxr_ghost_runtime_absent")
    res = CliRunner().invoke(cli, ["convert", str(trained_run / "best.pt"), "--out", str(tmp_path / "exp"), "--formats", "onnx,ghost",
                                   "--no-verify", "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "exp" / "convert_report.json").read_text())
    status = {(a["format"], a["precision"]): (a["status"], a["reason"]) for a in report["artifacts"]}
    assert status[("onnx", "fp32")][0] == "ok"
    assert status[("ghost", "fp32")] == ("skipped", "edgecxr_ghost_runtime_absent is not installed: pip install ghost-runtime")
    (line,) = [ln for ln in res.output.splitlines() if ln.strip().startswith("ghost")]
    assert "skipped" in line and line.endswith("(edgecxr_ghost_runtime_absent is not installed: pip install ghost-runtime)")
    assert "Traceback" not in res.output and not (tmp_path / "exp" / "mobilenet_v2_fp32.ghost").exists()


def test_a_missing_production_package_skips_only_the_precisions_that_need_it(register_ghost, trained_run, synthetic_data, tmp_path):
    from edgecxr.convert.formats.base import Requirement
    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint

    register_ghost("numpy", (Requirement("edgecxr_ghost_quantizer_absent", "pip install ghost-quantizer", ("int8",)),))
    opts = ConvertOptions(formats=("ghost",), int8=True, calib_data=str(synthetic_data), verify=False)
    rep = convert_checkpoint(str(trained_run / "best.pt"), str(tmp_path / "exp"), opts, progress=False, echo=lambda s: None)
    status = {(a["format"], a["precision"]): (a["status"], a["reason"]) for a in rep["artifacts"]}
    assert status[("ghost", "fp32")] == ("ok", "")
    assert status[("ghost", "int8")] == ("skipped", "edgecxr_ghost_quantizer_absent is not installed: pip install ghost-quantizer")
    assert (tmp_path / "exp" / "mobilenet_v2_fp32.ghost").exists()
