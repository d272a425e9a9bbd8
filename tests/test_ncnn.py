"""ncnn end to end with the real pnnx and ncnn packages: convert (FP32, FP16, INT8 written
in Python in ncnn's int8 conventions) verified against PyTorch, golden-vector self-tests
in the device runner, bench/eval/explain through the one runtime interface, companions
counted and copied, and the runner under qemu on the Pi 4 core.

The model is the session's 2-epoch MobileNetV2 at 32 px: it judges conversion and file
layout, not INT8 accuracy (the README's measurements on real X-rays do that).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, run_cli

pytest.importorskip("ncnn", reason="pip install ncnn")
pytest.importorskip("pnnx", reason="pip install pnnx")
pytest_plugins = ["bench_fixtures"]  # sshd_server for the --host test

RUNNER = ROOT / "device" / "edgecxr_runner.py"
PRECISIONS = ("fp32", "fp16", "int8")


@pytest.fixture(scope="module")
def ncnn_export(trained_run, tmp_path_factory) -> tuple[Path, dict]:
    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint

    out = tmp_path_factory.mktemp("ncnn_export")
    # a relative --out: pnnx runs in a work folder of its own, so paths handed to it must be absolute
    opts = ConvertOptions(formats=("ncnn",), int8=True, fp16=True, calib_n=16, threads=2)
    rep = convert_checkpoint(str(trained_run / "best.pt"), os.path.relpath(out), opts, progress=False, echo=lambda s: None)
    return out, rep


def _model(out: Path, precision: str) -> Path:
    return out / f"mobilenet_v2_{precision}.ncnn.param"


def _runner(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_convert_writes_verified_ncnn_pairs_with_contract_and_golden_vectors(ncnn_export):
    out, rep = ncnn_export
    arts = {a["precision"]: a for a in rep["artifacts"] if a["format"] == "ncnn"}
    assert set(arts) == set(PRECISIONS), rep["artifacts"]
    for precision, art in arts.items():
        param = _model(out, precision)
        weights = param.with_name(param.name.replace(".param", ".bin"))
        assert art["file"] == param.name and art["verify"]["runtime"].startswith("ncnn ")
        assert art["bytes"] == param.stat().st_size + weights.stat().st_size  # graph + weights, not the sidecar
        contract = json.loads(Path(f"{param}.json").read_text())
        assert contract["format"] == "ncnn" and contract["precision"] == precision and contract["selftest"]["images"]
    assert not [f for f in os.listdir(out) if "pnnx" in f or f.endswith(".pt") or f.startswith(".ncnn-work")]
    assert arts["fp32"]["status"] == "ok" and arts["fp32"]["verify"]["top1_agreement"] == 1.0
    assert arts["fp32"]["verify"]["max_abs_logit_diff"] < 1e-3
    assert arts["fp16"]["status"] == "ok" and arts["fp16"]["verify"]["top1_agreement"] == 1.0
    # INT8 is measured like every other file (a 2-epoch model is no judge of its accuracy)
    assert arts["int8"]["status"] in ("ok", "degraded") and arts["int8"]["verify"]["images"] > 0
    assert " 8=2" in _model(out, "int8").read_text() and " 8=1" in _model(out, "int8").read_text()
    assert arts["int8"]["bytes"] < arts["fp16"]["bytes"] < arts["fp32"]["bytes"]
    assert "calibration" in json.loads(Path(f"{_model(out, 'int8')}.json").read_text())["source"]


def test_int8_weights_are_the_ones_ncnns_own_quantizer_makes(ncnn_export, trained_run, tmp_path):
    """The same scales with float weights make ncnn quantize them itself at load: the
    outputs must be identical to those of the int8 weights written in Python."""
    from edgecxr.convert.calibration import load_calibration
    from edgecxr.convert.formats.ncnn import int8 as ncnn_int8
    from edgecxr.device.runtimes.ncnn_cpu import NcnnBackend
    from edgecxr.models.factory import load_model

    out, _ = ncnn_export
    _, contract = load_model(str(trained_run / "best.pt"))
    x = load_calibration(contract, None, 16, progress=False).nchw(contract.preprocess)
    fp32 = _model(out, "fp32")
    pairs = {}
    for store in ("int8", "float32"):
        param, weights = tmp_path / f"{store}.ncnn.param", tmp_path / f"{store}.ncnn.bin"
        ncnn_int8.quantize(str(fp32), str(fp32).replace(".param", ".bin"), x, "minmax", str(param), str(weights), 1, store=store)
        pairs[store] = param
    int8_file = NcnnBackend(str(pairs["int8"]), 1, contract=json_contract(_model(out, "int8")))
    ncnn_side = NcnnBackend(str(pairs["float32"]), 1, contract=json_contract(_model(out, "int8")))
    float_ref = NcnnBackend(str(fp32), 1)
    a, b, f = int8_file.predict(x[:6]), ncnn_side.predict(x[:6]), float_ref.predict(x[:6])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, f)  # the int8 kernels did run


def json_contract(param: Path):
    from edgecxr.device.contract import read_sidecar

    return read_sidecar(str(param))


def test_runner_selftest_passes_for_every_precision(ncnn_export):
    out, _ = ncnn_export
    for precision in PRECISIONS:
        proc = _runner("--model", str(_model(out, precision)), "--selftest", "--threads", "1")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "self-test PASS" in proc.stdout and f"ncnn {precision}" in proc.stdout


def test_runner_classifies_an_image_with_ncnn(ncnn_export, synthetic_data):
    out, _ = ncnn_export
    image = sorted((synthetic_data / "Opacity_Focal").glob("*.png"))[0]
    proc = _runner("--model", str(_model(out, "int8")), "--image", str(image), "--json", "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rec["label"] in rec["probabilities"] and abs(sum(rec["probabilities"].values()) - 1) < 1e-4
    assert "runtime ncnn" in proc.stderr + proc.stdout


def test_runner_without_ncnn_says_how_to_install_it_in_one_line(ncnn_export, tmp_path):
    out, _ = ncnn_export
    (tmp_path / "ncnn.py").write_text("raise ImportError('ncnn left out')\n")
    proc = _runner("--model", str(_model(out, "fp32")), "--selftest", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install ncnn" in lines[0], proc.stderr


def test_weights_file_is_a_companion_counted_and_listed(ncnn_export):
    from edgecxr.bench.artifacts import collect
    from edgecxr.convert.formats import find_artifacts
    from edgecxr.device.formats import artifact_files, model_bytes

    out, _ = ncnn_export
    param = str(_model(out, "fp16"))
    assert artifact_files(param) == [param, param.replace(".param", ".bin"), param + ".json"]
    assert model_bytes(param) == os.path.getsize(param) + os.path.getsize(param.replace(".param", ".bin"))
    assert [n.precision for _p, n in find_artifacts(str(out)) if n.format == "ncnn"] == list(PRECISIONS)
    (found,) = [a for a in collect([param])]
    assert found.format == "ncnn" and found.files == artifact_files(param)


def test_missing_weights_file_is_one_clear_error(ncnn_export, tmp_path):
    from edgecxr.errors import EdgecxrError
    from edgecxr.models.runtime import open_model

    out, _ = ncnn_export
    lone = tmp_path / "mobilenet_v2_fp32.ncnn.param"
    shutil.copy(_model(out, "fp32"), lone)
    shutil.copy(f"{_model(out, 'fp32')}.json", f"{lone}.json")
    with pytest.raises(EdgecxrError, match=r"weights file mobilenet_v2_fp32\.ncnn\.bin is missing"):
        open_model(str(lone))


def test_bench_eval_and_lime_open_ncnn_files(ncnn_export, synthetic_data, tmp_path):
    out, _ = ncnn_export
    run_cli("bench", str(_model(out, "int8")), "--threads", "1,2", "--runs", "3", "--warmup", "1",
            "--bootstrap", "20", "--out", str(tmp_path / "bench"), "--quiet")
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert {(r["precision"], r["threads"]) for r in rows} == {("int8", 1), ("int8", 2)}
    assert all(r["runtime"].startswith("ncnn") and not r.get("error") and r["selftest"]["passed"] for r in rows), rows
    run_cli("eval", str(_model(out, "fp16")), "--out", str(tmp_path / "eval"), "--bootstrap", "20")
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["n_images"] > 0
    image = sorted((synthetic_data / "Normal").glob("*.png"))[0]
    run_cli("explain", str(_model(out, "int8")), "--image", str(image), "--method", "lime", "--samples", "40",
            "--out", str(tmp_path / "lime"))
    assert list((tmp_path / "lime").glob("*_lime.npy"))


@pytest.mark.ssh
def test_bench_host_copies_the_weights_and_runs_ncnn_on_the_pi(ncnn_export, sshd_server, tmp_path):
    out, _ = ncnn_export
    known = tmp_path / "known_hosts"
    known.write_text(sshd_server.known_hosts_line())
    run_cli("bench", str(_model(out, "int8")), "--host", sshd_server.target, "--identity", str(sshd_server.client_key),
            "--known-hosts", str(known), "--remote-python", sys.executable, "--device", "rpi", "--threads", "1",
            "--runs", "3", "--warmup", "1", "--bootstrap", "20", "--remote-images", "2", "--out", str(tmp_path / "b"), "--quiet")
    (row,) = json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]
    assert row["device"] == "rpi" and not row.get("error") and row["runtime"].startswith("ncnn"), row
    assert row["pi_host_top1_agreement"] == 1.0


@pytest.mark.slow  # about 4 minutes under qemu on a shared 2-core machine
@pytest.mark.aarch64
def test_runner_on_emulated_cortex_a72_matches_x86_for_ncnn(ncnn_export, synthetic_data, tmp_path):
    if shutil.which("qemu-aarch64-static") is None:
        pytest.skip("qemu-aarch64-static not installed (apt-get install qemu-user-static)")
    out, _ = ncnn_export
    images = tmp_path / "images"
    images.mkdir()
    for d in sorted(p for p in synthetic_data.iterdir() if p.is_dir()):
        for f in sorted(d.glob("*.png"))[:2]:
            shutil.copy(f, images / f"{d.name}_{f.name}")
    models = [str(_model(out, p)) for p in PRECISIONS]
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "reproduce" / "aarch64_check.sh"), "--images", str(images), *models],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for p in PRECISIONS:
        assert any(line.startswith(f"PASS mobilenet_v2_{p}.ncnn.param ({p})") for line in proc.stdout.splitlines()), proc.stdout
    selftests = [line for line in proc.stdout.splitlines() if line.startswith("SELFTEST")]
    assert len(selftests) == 6 and all("self-test PASS" in line for line in selftests), proc.stdout
    assert not re.search(r"\d\s*ms\b", proc.stdout), "emulated timings must never be reported"


def test_entropy_threshold_clips_a_lone_outlier_but_not_a_uniform_range():
    from edgecxr.convert.formats.ncnn.int8 import kl_threshold

    rng = np.random.default_rng(0)
    spiky = np.abs(np.concatenate([rng.normal(0, 1, 100000), [40.0]]))
    h, edges = np.histogram(spiky, bins=2048, range=(0, spiky.max()))
    assert 2.5 < kl_threshold(h, edges[1] - edges[0]) < 10  # far below the outlier, well above most values
    flat = rng.uniform(0, 6, 100000)
    h, edges = np.histogram(flat, bins=2048, range=(0, 6))
    assert kl_threshold(h, edges[1] - edges[0]) > 5.9  # nothing to gain from clipping a uniform range
