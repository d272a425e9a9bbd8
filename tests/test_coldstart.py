"""Cold start (``device/coldstart.py``, ``edgecxr bench --cold-start N``): fresh runner processes
timed to their first verdict, the table columns, and the "Ship" line that says when the cold
start changes the choice. Real processes throughout; no timing thresholds."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from decision_fixtures import png, toy_onnx
from helpers import ROOT, run_cli

from edgecxr.bench.advice import advice_lines, ship_advice

pytest_plugins = ["bench_fixtures"]


def test_each_fresh_process_is_timed_to_its_verdict(tmp_path):
    model = toy_onnx(str(tmp_path / "toy.onnx"), None)
    img = png(tmp_path / "x.png", 200)
    proc = subprocess.run([sys.executable, str(ROOT / "device" / "coldstart.py"), "--model", model, "--image", img, "--runs", "3",
                           "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)
    assert rec["ok"] == 3 and len(rec["cold_start_ms"]) == 3 and len(rec["first_inference_ms"]) == 3
    # the process's whole start-up contains its own first inference
    assert all(c > f for c, f in zip(rec["cold_start_ms"], rec["first_inference_ms"]))
    assert rec["cold_start_first_process_ms"] == pytest.approx(rec["cold_start_ms"][0], abs=1e-3)


def test_a_model_that_does_not_open_is_an_error_not_a_crash(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    img = png(tmp_path / "x.png", 200)
    proc = subprocess.run([sys.executable, str(ROOT / "device" / "coldstart.py"), "--model", str(bad), "--image", img, "--runs", "2"],
                          capture_output=True, text=True, timeout=300)
    rec = json.loads(proc.stdout)
    assert proc.returncode == 0 and "without a verdict" in rec["error"] and "edgecxr-runner: error" in rec["error"]


def _row(name: str, median: float, cold: float, precision: str = "fp32") -> dict:
    return {"device": "host", "arch": "mobilenet_v2", "threads": 1, "artifact": name, "runtime_name": "litert", "runtime": "litert",
            "has_contract": True, "precision": precision, "delta_macro_f1_pp": 0.0, "top1_agreement": 1.0,
            "runs_ms": [median] * 5, "cold_start_median_ms": cold}


def test_ship_line_says_when_cold_start_changes_the_choice():
    doc = {"rows": [_row("a_fp32.onnx", 2.0, 900.0), _row("a_int8.tflite", 3.0, 400.0, "int8")]}
    (line,) = advice_lines({"rows": doc["rows"], "advice": ship_advice(doc)})
    assert "ship a_fp32.onnx" in line
    assert "cold start changes the choice" in line and "a_int8.tflite [litert] gives its first verdict in 400 ms against 900 ms" in line


def test_ship_line_says_when_the_fastest_file_also_starts_fastest():
    doc = {"rows": [_row("a_fp32.onnx", 2.0, 300.0), _row("a_int8.tflite", 3.0, 400.0, "int8")]}
    (line,) = advice_lines({"rows": doc["rows"], "advice": ship_advice(doc)})
    assert "also the fastest cold start (300 ms" in line and "changes the choice" not in line


def test_bench_cold_start_adds_columns_beside_the_median(export_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("bench", str(export_dir / "mobilenet_v2_int8.tflite"), str(export_dir / "mobilenet_v2_fp32.onnx"), "--threads", "1",
                   "--runs", "5", "--warmup", "1", "--bootstrap", "20", "--cold-start", "2", "--out", str(out), "--quiet")
    doc = json.loads((out / "bench.json").read_text())
    for r in doc["rows"]:
        assert len(r["cold_start_ms"]) == 2 and r["cold_start_median_ms"] > 0 and r["cold_start_threads"] == 1, r
        assert r["first_inference_median_ms"] is not None
    header = proc.stdout.splitlines()[0]
    assert header.index("p90") < header.index("cold") < header.index("1st") < header.index("self-test")
    assert "Cold start (ms): median of 2 fresh runner processes" in proc.stdout
    assert "--cold-start" in run_cli("bench", "--help").stdout
    table = subprocess.run([sys.executable, "-m", "edgecxr.bench.tables", str(out / "bench.json"), "--format", "readme"],
                           capture_output=True, text=True, check=True).stdout
    assert "cold start ms" in table.splitlines()[0]
    assert "cold_start_median_ms" in (out / "bench.csv").read_text().splitlines()[0]


@pytest.mark.ssh
def test_cold_start_on_the_pi_over_ssh(sshd_server, export_dir, tmp_path):
    kh = Path(tmp_path / "kh")
    kh.write_text(sshd_server.known_hosts_line())
    out = tmp_path / "out"
    run_cli("bench", str(export_dir / "mobilenet_v2_int8.tflite"), "--host", sshd_server.target, "--identity", str(sshd_server.client_key),
            "--known-hosts", str(kh), "--remote-python", sys.executable, "--threads", "1", "--runs", "3", "--warmup", "0",
            "--bootstrap", "20", "--remote-images", "2", "--cold-start", "2", "--out", str(out), "--quiet")
    (row,) = json.loads((out / "bench.json").read_text())["rows"]
    assert row["device"] == "rpi" and len(row["cold_start_ms"]) == 2, row.get("cold_start_error")
