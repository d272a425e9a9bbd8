"""Sustained load (``--bench --sustained``, ``edgecxr bench --sustained``): MLPerf's early-stopping
estimate, the sensor readers, the per-minute summary, and the runner here, over SSH and on an
emulated Cortex-A72. Durations are a few seconds with 1-s windows: correctness, not timings."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from decision_fixtures import toy_onnx
from helpers import run_bare_runner, run_cli

from edgecxr.device import sensors
from edgecxr.device.sustained import early_stopping_estimate, min_queries, summarize_run

pytest_plugins = ["bench_fixtures"]
AARCH64_CACHE = Path(os.environ.get("EDGECXR_AARCH64_CACHE", Path.home() / ".cache" / "edgecxr-aarch64"))


# --- MLPerf early stopping, against a literal transcription of LoadGen's C++ ----------------------

def _odds(h: int, t: int, p: float) -> float:
    """early_stopping.cc odds(h, t, p, d=0): P(t or fewer overlatency queries among h + t)."""
    n = h + t
    return sum(math.comb(n, x) * (1 - p) ** x * p ** (n - x) for x in range(t + 1))


def _find_min_passing(t: int, p: float, c: float) -> int:
    lo, hi = 1, 100_000  # binary search as find_min_passing: the smallest h with odds < 1 - c
    while lo < hi:
        mid = (lo + hi) // 2
        if _odds(mid, t, p) < 1 - c:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _loadgen_single_stream(latencies: list[float], p: float = 0.9, c: float = 0.99) -> float | None:
    """results.cc PerformanceSummary::EarlyStopping, SingleStream branch, line by line."""
    s, n = sorted(latencies), len(latencies)
    t, h_min = 1, _find_min_passing(1, p, c)
    if n < h_min + 1:
        return None
    for i in range(2, n + 1):
        if n < _find_min_passing(i, p, c) + i:
            t = i - 1
            break
    return s[n - t]


def test_early_stopping_needs_64_queries_for_p90_at_099_as_loadgen_says():
    assert min_queries(0.90, 0.99) == 64
    assert early_stopping_estimate(np.arange(63.0))["estimate_ms"] is None
    assert early_stopping_estimate(np.arange(64.0))["estimate_ms"] == 63.0  # the largest: nothing discarded


@pytest.mark.parametrize("n", [64, 65, 90, 200, 511, 1000])
def test_early_stopping_estimate_equals_loadgens_search(n):
    lat = list(np.random.default_rng(n).gamma(4.0, 2.0, size=n))
    ours = early_stopping_estimate(lat)
    assert ours["estimate_ms"] == _loadgen_single_stream(lat)
    assert ours["estimate_ms"] >= np.percentile(lat, 90)  # a conservative p90


# --- sensors ---------------------------------------------------------------------------------------

def _fake_sysfs(root: Path, temps: dict[str, int], clocks: list[int], throttled: str | None) -> Path:
    for i, (kind, milli) in enumerate(temps.items()):
        zone = root / f"sys/class/thermal/thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{milli}\n")
    for i, khz in enumerate(clocks):
        d = root / f"sys/devices/system/cpu/cpu{i}/cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_cur_freq").write_text(f"{khz}\n")
    if throttled is not None:
        d = root / "sys/devices/platform/soc/soc:firmware"
        d.mkdir(parents=True)
        (d / "get_throttled").write_text(throttled + "\n")
    return root


def test_pi_like_sysfs_is_read_and_throttle_bits_decoded(tmp_path):
    root = _fake_sysfs(tmp_path, {"gpu-thermal": 70000, "cpu-thermal": 61234}, [1500000, 1800000, 600000, 1800000], "50005")
    r = sensors.read_all(str(root), vcgencmd="/nonexistent")
    assert r["temp_c"] == pytest.approx(61.234) and "cpu-thermal" in r["sources"]["temp_c"]  # the CPU zone, not the hottest
    assert r["clock_mhz"] == 1800.0
    assert r["throttled"] == 0x50005
    assert sensors.decode_throttled(0x50005) == ["under-voltage now", "throttled now", "under-voltage has occurred",
                                                 "throttling has occurred"]


def test_a_machine_without_sensors_says_not_readable_here(tmp_path):
    r = sensors.read_all(str(tmp_path), vcgencmd=None if shutil.which("vcgencmd") is None else "/nonexistent")
    assert r["temp_c"] is r["clock_mhz"] is r["throttled"] is None
    assert all(v.startswith("not readable here") for v in r["sources"].values()), r["sources"]


# --- the per-minute summary ------------------------------------------------------------------------

def test_windows_drift_and_throttle_bits_from_a_run_that_slows_down():
    starts = [int(i * 0.01e9) for i in range(1200)]  # 12 s of queries, 10 ms apart
    durations = [int((5e6 if s < 6e9 else 10e6)) for s in starts]  # 5 ms, then 10 ms after 6 s
    samples = [(t, {"temp_c": 50.0 + t, "clock_mhz": 1800.0 - 10 * t, "throttled": 0x80000 if t >= 8 else 0}) for t in range(13)]
    s = summarize_run(starts, durations, samples, window_s=3.0)
    assert [w["n"] for w in s["windows"]] == [300, 300, 300, 300]
    assert s["windows"][0]["p90_ms"] == pytest.approx(5.0) and s["windows"][-1]["p90_ms"] == pytest.approx(10.0)
    assert s["windows"][-1]["temp_c_max"] == 62.0 and s["windows"][0]["clock_mhz_min"] == 1770.0
    assert s["drift"]["ratio"] == pytest.approx(2.0) and s["drift"]["span_s"] == 6.0
    assert s["throttle"]["bits"] == ["soft temperature limit has occurred"]
    assert s["windows"][-1]["throttled_bits"] == ["soft temperature limit has occurred"] and s["windows"][0]["throttled_bits"] == []


# --- the runner ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_model(tmp_path_factory) -> Path:
    return Path(toy_onnx(str(tmp_path_factory.mktemp("toy") / "toy.onnx"), None))


def test_bare_runner_sustained_mode_prints_one_well_formed_report(toy_model, tmp_path):
    proc = run_bare_runner(tmp_path, "--model", str(toy_model), "--bench", "--sustained", "2.5", "--window", "1", "--threads", "1",
                           "--warmup", "2")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)
    assert rec["mode"] == "sustained" and rec["n_queries"] == len(rec["runs_ms"]) == len(rec["starts_s"]) > 64
    assert [w["minute"] for w in rec["windows"]] == [1, 2, 3] and sum(w["n"] for w in rec["windows"]) == rec["n_queries"]
    assert all(w["early_stop_p90_ms"] >= w["p90_ms"] for w in rec["windows"] if w["early_stop_p90_ms"] is not None)
    for name, source in rec["sources"].items():  # a value with its source, or the reason there is none
        assert source.startswith("not readable here") == (rec["samples"][0][name] is None), (name, source)
    assert rec["drift"]["ratio"] > 0 and rec["device_info"]["cores"] >= 1


def test_sustained_without_bench_is_one_line_exit_2(toy_model, tmp_path):
    proc = run_bare_runner(tmp_path, "--model", str(toy_model), "--selftest", "--sustained", "5")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("edgecxr-runner: error: --sustained")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bench_sustained_writes_report_table_and_plot(export_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("bench", str(export_dir / "mobilenet_v2_int8.tflite"), str(export_dir / "mobilenet_v2_fp32.tflite"),
                   "--sustained", "2", "--window", "1", "--threads", "1", "--warmup", "1", "--out", str(out))
    doc = json.loads((out / "sustained.json").read_text())
    assert sorted(r["artifact"] for r in doc["runs"]) == ["mobilenet_v2_fp32.tflite", "mobilenet_v2_int8.tflite"]
    assert all("error" not in r and r["where"] == "host" and len(r["windows"]) == 2 for r in doc["runs"])
    md = (out / "sustained.md").read_text()
    assert md.count("| window, s |") == 2 and "Drift: last" in md and "Throttle bits seen:" in md
    assert proc.stdout.strip() == md.strip()
    assert (out / "bench_sustained.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.ssh
def test_bench_sustained_over_ssh_runs_on_the_pi_and_cleans_up(sshd_server, export_dir, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd_server.known_hosts_line())
    before = set(Path("/tmp").glob("edgecxr-bench.*"))
    out = tmp_path / "out"
    run_cli("bench", str(export_dir / "mobilenet_v2_int8.tflite"), "--host", sshd_server.target, "--identity", str(sshd_server.client_key),
            "--known-hosts", str(kh), "--remote-python", sys.executable, "--sustained", "2", "--window", "1", "--threads", "1",
            "--out", str(out))
    doc = json.loads((out / "sustained.json").read_text())
    assert [(r["where"], r["artifact"]) for r in doc["runs"]] == [("rpi", "mobilenet_v2_int8.tflite")]
    assert doc["runs"][0]["n_queries"] > 0 and len(doc["runs"][0]["windows"]) == 2
    assert set(Path("/tmp").glob("edgecxr-bench.*")) == before


def arm64_python(tmp_path: Path) -> Path:
    """A wrapper that runs the cached arm64 Python 3.11 under qemu -cpu cortex-a72 (skip when absent)."""
    qemu = shutil.which("qemu-aarch64-static")
    sites = sorted(AARCH64_CACHE.glob("site-numpy*-litert*"))
    if not qemu or not (AARCH64_CACHE / "root/usr/bin/python3.11").exists() or not sites:
        pytest.skip("no qemu-aarch64-static or arm64 Python cache (run scripts/reproduce/aarch64_check.sh once)")
    wrapper = tmp_path / "python3-arm64"
    wrapper.write_text(f"#!/bin/sh\nexport PYTHONPATH={sites[-1]} EDGECXR_EMULATED=1\n"
                       f"exec {qemu} -L {AARCH64_CACHE / 'root'} -cpu cortex-a72 {AARCH64_CACHE / 'root/usr/bin/python3.11'} -S \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.slow
@pytest.mark.aarch64
def test_sustained_and_cold_start_run_on_an_emulated_cortex_a72(export_dir, tmp_path):
    """Correctness of the Pi path only: a short run, flagged as emulated, never a Pi timing."""
    py = arm64_python(tmp_path)
    dev = tmp_path / "device"
    shutil.copytree(Path(__file__).resolve().parents[1] / "device", dev, ignore=shutil.ignore_patterns("__pycache__"))
    model = str(export_dir / "mobilenet_v2_int8.tflite")
    proc = subprocess.run([str(py), str(dev / "edgecxr_runner.py"), "--model", model, "--bench", "--sustained", "3", "--window", "1",
                           "--threads", "1", "--warmup", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)
    assert rec["emulated"] is True and rec["device_info"]["machine"] == "aarch64" and "EMULATED" in rec["device"]
    assert rec["n_queries"] > 0 and rec["windows"] and rec["selftest"]["passed"] is True
    from edgecxr.bench.sustained_report import markdown

    assert "EMULATED (qemu)" in markdown({"settings": {"seconds": 3, "window_s": 1}, "runs": [{**rec, "artifact": "m", "where": "rpi"}]})
    import cv2

    from edgecxr.data.synthetic import make_image

    img = str(tmp_path / "img.png")
    cv2.imwrite(img, make_image("Normal", 0, 64, 0))
    cold = subprocess.run([str(py), str(dev / "coldstart.py"), "--model", model, "--image", img, "--runs", "2", "--threads", "1",
                           "--python", str(py)], capture_output=True, text=True, timeout=900)
    assert cold.returncode == 0, cold.stderr
    rec = json.loads(cold.stdout)
    assert rec["ok"] == 2 and len(rec["cold_start_ms"]) == 2 and len(rec["first_inference_ms"]) == 2
