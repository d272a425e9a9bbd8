"""scripts/dev/instruction_counts.py: counted instructions per inference and the check CI runs.

The fast tests pin the check's rules (tolerance, a baseline only for the same CPUID under
valgrind, said plainly when none matches); the slow one counts for real under valgrind:
repeats agree within 0.1%, the committed baseline passes, a slower variant fails."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT

SCRIPT = ROOT / "scripts" / "dev" / "instruction_counts.py"
_spec = importlib.util.spec_from_file_location("instruction_counts", SCRIPT)
ic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ic)

KEY = {"machine": "x86_64", "valgrind": "valgrind-3.19.0", "cpuid_under_valgrind": ["AVX", "AVX2", "FMA3"], "python": "3.11",
       "runtimes": {"numpy": "2.4.6", "ai-edge-litert": "2.3.0", "onnxruntime": "1.31.1"}}


def _baseline(instructions: float) -> dict:
    return {"tolerance": 0.03, "profiles": [{"key": KEY, "created": "2026-01-01", "artifacts": {"m.onnx 1x3x64x64": {"instructions": instructions}}}]}


def _counts(instructions: float) -> dict:
    return {"m.onnx 1x3x64x64": {"instructions": instructions, "repeats": [instructions], "spread": 0.0}}


@pytest.mark.parametrize("now, fails", [(1_020_000, False), (1_029_000, False), (1_031_000, True), (900_000, False)])
def test_only_a_rise_over_3_percent_fails(now, fails, capsys):
    assert ic.check(_baseline(1_000_000), KEY, _counts(now)) == (1 if fails else 0)
    out = capsys.readouterr().out
    assert ("FAIL: rose more than the tolerance" in out) == fails
    assert ("faster: update the baseline" in out) == (now < 970_000)
    assert "(1 of 1 artifacts in it;" in out


def test_a_file_missing_from_the_baseline_is_listed_and_not_counted_as_compared(capsys):
    counts = {**_counts(1_000_000), "other.tflite 1x3x224x224": {"instructions": 9e7, "repeats": [9e7], "spread": 0.0}}
    assert ic.check(_baseline(1_000_000), KEY, counts) == 0
    out = capsys.readouterr().out
    assert "| other.tflite 1x3x224x224 | 90.000 | n/a | n/a | not in the baseline |" in out and "(1 of 2 artifacts in it;" in out


def test_another_instruction_set_is_not_compared_and_says_so(capsys):
    avx512 = {**KEY, "cpuid_under_valgrind": ["AVX", "AVX2", "AVX512F", "FMA3"]}
    assert ic.check(_baseline(1_000_000), avx512, _counts(5_000_000)) == 0  # 5x the count: not compared, not failed
    out = capsys.readouterr().out
    assert out.startswith("NO BASELINE for this CPU/toolchain, nothing checked") and "cpuid_under_valgrind" in out


def test_a_newer_runtime_is_another_key():
    newer = {**KEY, "runtimes": {**KEY["runtimes"], "onnxruntime": "1.32.0"}}
    assert ic.matching_profile(_baseline(1.0), newer) is None and ic.matching_profile(_baseline(1.0), KEY) is not None
    assert "runtimes" in ic.key_difference(_baseline(1.0), newer)


def test_the_committed_baseline_records_the_cpu_it_was_measured_with():
    doc = json.loads((ROOT / "scripts" / "dev" / "instruction_baseline.json").read_text())
    assert doc["tolerance"] == 0.03 and doc["profiles"]
    for p in doc["profiles"]:
        assert {"machine", "valgrind", "cpuid_under_valgrind", "runtimes"} <= set(p["key"])
        assert p["measured_on"]["model"] and set(p["artifacts"]) == {f"{n} {s}" for n, s in
                                                                      zip(ic.NAMES, ["1x3x64x64"] * 4)}


def _spread_counts(spread: float) -> dict:
    return {"a.tflite 1x64x64x3": {"instructions": 1e6, "repeats": [1e6, 1e6], "spread": 0.0},
            "b.tflite 1x64x64x3": {"instructions": 1e6, "repeats": [1e6, 1e6 * (1 + spread)], "spread": spread}}


@pytest.mark.parametrize("spread, fails", [(0.0009, False), (0.0011, True)])
def test_max_spread_fails_only_when_repeats_differ_by_more_than_the_limit(spread, fails, capsys):
    assert ic.spread_check(_spread_counts(spread), 0.001) == (1 if fails else 0)
    out = capsys.readouterr().out
    assert out.startswith("repeat spread: largest") and "b.tflite 1x64x64x3" in out and "limit 0.10%" in out
    assert out.strip().endswith("FAIL: b.tflite 1x64x64x3 above it" if fails else "PASS")


def test_given_model_files_are_counted_but_never_recorded_as_the_ci_baseline(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    assert ic.parse_args([str(model)]).models == [str(model)]
    for argv in ([str(model), "--update"], [str(model), "--max-spread", "0.001"], [str(tmp_path / "missing.tflite")]):
        with pytest.raises(SystemExit) as exc:
            ic.parse_args(argv)
        assert exc.value.code == 2


def test_a_missing_model_file_is_one_line_not_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "gone.onnx")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"instruction_counts.py: error: no such model file: {tmp_path / 'gone.onnx'}"


@pytest.mark.slow
def test_a_given_model_file_is_counted_with_its_repeat_spread(tmp_path):
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind not installed (apt-get install valgrind; .ci/run does)")
    from decision_fixtures import toy_onnx

    model = toy_onnx(str(tmp_path / "toy.onnx"), None)
    out = tmp_path / "counts.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), model, "--repeat", "2", "--max-spread", "0.001", "--check", "--json", str(out)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (aid,) = json.loads(out.read_text())["counts"]
    assert aid == "toy.onnx 1x1x16x16"
    assert next(line for line in proc.stdout.splitlines() if line.startswith("repeat spread: largest")).endswith(": PASS")


@pytest.mark.slow
def test_counts_repeat_within_0_1_percent_and_the_check_fails_on_a_slower_variant(tmp_path):
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind not installed (apt-get install valgrind; .ci/run does)")
    out = tmp_path / "counts.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check", "--repeat", "2", "--json", str(out)], capture_output=True,
                          text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = json.loads(out.read_text())["counts"]
    assert len(counts) == 4 and all(c["spread"] < 0.001 for c in counts.values()), counts
    if "NO BASELINE" in proc.stdout:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert "PASS: instruction counts against the baseline" in proc.stdout
    slower = subprocess.run([sys.executable, str(SCRIPT), "--check", "--variant", "slower", "--only", "fp32.onnx"], capture_output=True,
                            text=True, timeout=3600)
    assert slower.returncode == 1, slower.stdout + slower.stderr
    assert "mobilenet_v2_fp32.onnx" in next(line for line in slower.stdout.splitlines() if "FAIL: rose" in line)
