"""The Pi path verified on aarch64: `edgecxr convert` output (FP32 and INT8, TFLite and
ONNX, of the trained MobileNetV2 fixture, 32 px) run by a bare device/ copy under
qemu-aarch64-static pinned to the Pi 4 core, against the same run on x86, after each
file's golden-vector self-test passed on both.

Not marked slow: CI runs it. It skips (with the reason) where qemu-user-static, apt
or PyPI are unavailable. First run about 25 s for the arm64 Python and wheels
(cached in ~/.cache/edgecxr-aarch64), then about 10 s; conversion about 50 s.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.aarch64


@pytest.fixture(scope="module")
def converted(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("aarch64_models")
    # verified (the run's test split), so each file carries its golden vectors; --keep-degraded: a 2-epoch
    # 32 px model is no judge of INT8 accuracy, this test is about aarch64 computing what x86 computes
    run_cli("convert", str(trained_run / "best.pt"), "--out", str(out), "--int8", "--formats", "onnx,tflite",
            "--calib-n", "30", "--keep-degraded", "--quiet")
    return out


def test_runner_on_emulated_cortex_a72_matches_x86(converted, synthetic_data, tmp_path):
    if shutil.which("qemu-aarch64-static") is None:
        pytest.skip("qemu-aarch64-static not installed (apt-get install qemu-user-static)")
    images = tmp_path / "images"
    images.mkdir()
    for d in sorted(p for p in synthetic_data.iterdir() if p.is_dir()):
        for f in sorted(d.glob("*.png"))[:2]:
            shutil.copy(f, images / f"{d.name}_{f.name}")
    models = [str(converted / f"mobilenet_v2_{p}.{f}") for f in ("tflite", "onnx") for p in ("fp32", "int8")]
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "reproduce" / "aarch64_check.sh"), "--images", str(images), *models],
                          capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("PASS mobilenet_v2_fp32.tflite (fp32)") for line in lines), proc.stdout
    assert any(line.startswith("PASS mobilenet_v2_int8.tflite (int8)") and "(required identical)" in line for line in lines)
    assert any(line.startswith("PASS mobilenet_v2_fp32.onnx (fp32)") for line in lines), proc.stdout
    assert any(line.startswith("PASS mobilenet_v2_int8.onnx (int8)") for line in lines), proc.stdout
    selftests = [line for line in lines if line.startswith("SELFTEST")]
    assert len(selftests) == 8 and all("self-test PASS" in line for line in selftests), proc.stdout
    assert not re.search(r"\d\s*ms\b", proc.stdout), "emulated timings must never be reported"
    print(f"aarch64 check took {seconds:.0f} s")
