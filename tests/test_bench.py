"""``edgecxr bench`` on this machine: real converted artifacts, real runtimes, real files.

One `edgecxr convert` folder (FP32/INT8 ONNX and TFLite of the tiny trained
MobileNetV2) is benchmarked once per session; the tests read its outputs.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

REFERENCE_MODELS = Path(__file__).resolve().parents[2] / "shared" / "reference-models"
pytest_plugins = ["bench_fixtures"]  # export_dir, shared with test_bench_remote.py


def _foreign_onnx(path: Path) -> Path:
    """A hand-built ONNX model with no contract: what a model from elsewhere looks like."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "foreign",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def bench_run(export_dir, trained_run, tmp_path_factory) -> dict:
    """One bench over the export folder, the checkpoint, a foreign ONNX and a broken file."""
    extra = tmp_path_factory.mktemp("bench_extra")
    foreign = _foreign_onnx(extra / "foreign conv.onnx")
    broken = extra / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer at all")
    out = tmp_path_factory.mktemp("bench_out")
    proc = run_cli("bench", str(export_dir), str(trained_run / "best.pt"), str(foreign), str(broken),
                   "--threads", "1,2", "--warmup", "2", "--runs", "7", "--bootstrap", "50", "--out", str(out), "--quiet")
    doc = json.loads((out / "bench.json").read_text())
    return {"out": out, "stdout": proc.stdout, "doc": doc, "foreign": foreign, "broken": broken}


def _rows(doc: dict, artifact: str) -> list[dict]:
    return [r for r in doc["rows"] if r["artifact"] == artifact]


def _text_table(stdout: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the aligned text table (columns are two or more spaces apart)."""
    lines = stdout.split("\n\n")[0].splitlines()
    split = [re.split(r"\s{2,}", line.strip()) for line in lines]
    return split[0], split[2:]


def _cells_of(bench_run: dict, artifact: str) -> list[dict[str, str]]:
    header, body = _text_table(bench_run["stdout"])
    return [dict(zip(header, cells)) for r, cells in zip(bench_run["doc"]["rows"], body) if r["artifact"] == artifact]


def test_bench_writes_table_json_csv_and_plot(bench_run):
    out = bench_run["out"]
    for name in ("bench.json", "bench.csv", "bench.md", "bench.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_lines = (out / "bench.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(bench_run["doc"]["rows"])


def test_default_table_is_compact_one_line_per_measurement_within_120_characters(bench_run):
    from edgecxr.bench.tables import COMPACT_HEADER

    header, body = _text_table(bench_run["stdout"])
    assert header == COMPACT_HEADER and len(body) == len(bench_run["doc"]["rows"])
    assert all(len(cells) == len(header) for cells in body)
    table = bench_run["stdout"].split("\n\n")[0].splitlines()
    assert max(len(line) for line in table) <= 120
    assert "--columns all" in bench_run["stdout"]  # the legend says where the other columns are


def test_every_column_stays_in_csv_json_and_the_full_table(bench_run):
    import csv

    from edgecxr.bench.tables import CSV_COLUMNS, MD_HEADER

    doc = bench_run["doc"]
    with open(bench_run["out"] / "bench.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == CSV_COLUMNS
    for row, r in zip(rows, doc["rows"]):
        measured = ("p99_ms", "std_ms", "load_ms", "peak_rss_mb", "runtime", "device_string", "macs")
        assert all(row[k] != "" for k in (measured if r.get("runs_ms") else ("error",))), r["artifact"]
    full = run_cli_module("edgecxr.bench.tables", str(bench_run["out"] / "bench.json"), "--format", "md", "--columns", "all")
    lines = full.split("\n\n")[0].splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == MD_HEADER and len(lines) == 2 + len(doc["rows"])


def test_a_checkpoint_and_the_files_converted_from_it_are_one_model(bench_run):
    labels = {cells["model"] for r in bench_run["doc"]["rows"] if r["arch"] == "mobilenet_v2"
              for cells in _cells_of(bench_run, r["artifact"])}
    assert labels == {"mobilenet_v2"}


def test_two_trainings_of_one_architecture_are_told_apart_by_their_folder():
    from edgecxr.bench.tables import model_labels

    rows = [{"arch": "mobilenet_v2", "artifact": "m.onnx", "path": f"/r/{run}/export/m.onnx", "source_checkpoint": f"/r/{run}/best.pt"}
            for run in ("qat", "imagenet")]
    rows.append({"arch": "mobilenet_v2", "artifact": "best.pt", "path": "/r/qat/best.pt", "source_checkpoint": "/r/qat/best.pt"})
    rows.append({"arch": "efficientnet_lite0", "artifact": "e.onnx", "path": "/r/lite0/export/e.onnx", "source_checkpoint": "/r/lite0/best.pt"})
    assert model_labels(rows) == {"/r/qat/export/m.onnx": "mobilenet_v2 (qat)", "/r/imagenet/export/m.onnx": "mobilenet_v2 (imagenet)",
                                  "/r/qat/best.pt": "mobilenet_v2 (qat)", "/r/lite0/export/e.onnx": "efficientnet_lite0"}


def test_columns_all_and_progress_lines_from_the_command_line(export_dir, tmp_path):
    """``--columns all`` reaches stdout and bench.md; progress off a terminal is whole lines, no redraws."""
    from edgecxr.bench.tables import MD_HEADER

    proc = run_cli("bench", str(export_dir / "mobilenet_v2_int8.tflite"), "--threads", "1", "--runs", "2", "--warmup", "0",
                   "--bootstrap", "0", "--format", "md", "--columns", "all", "--out", str(tmp_path / "o"),
                   env={"EDGECXR_PROGRESS": "auto", "EDGECXR_PROGRESS_INTERVAL": "0"})
    head = proc.stdout.splitlines()[0]
    assert [c.strip() for c in head.strip("|").split("|")] == MD_HEADER
    assert (tmp_path / "o" / "bench.md").read_text().splitlines()[0] == head
    assert "\r" not in proc.stderr and "bench: 1/1 run" in proc.stderr


def test_every_artifact_of_the_export_folder_gets_a_row_per_thread_count(bench_run):
    doc = bench_run["doc"]
    for name in ("mobilenet_v2_fp32.onnx", "mobilenet_v2_int8.onnx", "mobilenet_v2_fp32.tflite", "mobilenet_v2_int8.tflite", "best.pt"):
        rows = _rows(doc, name)
        assert sorted(r["threads"] for r in rows) == [1, 2], name
        for r in rows:
            assert len(r["runs_ms"]) == 7 and r["warmup"] == 2
            assert r["runtime"] and r["device_string"] == doc["devices"]["host"]["summary"] + " | " + r["runtime"]
            assert r["peak_rss_mb"] > r["rss_before_load_mb"] > 0 and r["load_ms"] > 0


def test_accuracy_has_bootstrap_ci_and_a_paired_delta_against_fp32(bench_run):
    doc = bench_run["doc"]
    fp32 = _rows(doc, "mobilenet_v2_fp32.onnx")[0]
    int8 = _rows(doc, "mobilenet_v2_int8.tflite")[0]
    assert int8["reference"] == "mobilenet_v2_fp32.onnx"
    assert fp32["delta_macro_f1_pp"] == 0.0 and fp32["top1_agreement"] == 1.0
    lo, hi = int8["macro_f1_ci95"]
    assert lo <= int8["macro_f1"] <= hi
    assert int8["delta_macro_f1_ci95"][0] <= int8["delta_macro_f1_pp"] <= int8["delta_macro_f1_ci95"][1]
    assert 0.0 <= int8["top1_agreement"] <= 1.0 and int8["n_images"] > 0


def test_every_converted_file_runs_its_selftest_before_timing_and_shows_it(bench_run):
    doc = bench_run["doc"]
    for name in ("mobilenet_v2_fp32.onnx", "mobilenet_v2_int8.onnx", "mobilenet_v2_fp32.tflite", "mobilenet_v2_int8.tflite"):
        for r in _rows(doc, name):
            assert r["selftest"]["passed"] is True and r["selftest"]["images"] == 8, (name, r["selftest"])
            assert r["cpu_int8_features"] and r["cpu_int8_target"]
    assert _rows(doc, "best.pt")[0]["selftest"]["passed"] is None  # a checkpoint carries no golden vectors
    for name in ("mobilenet_v2_fp32.onnx", "mobilenet_v2_int8.tflite"):
        assert [c["self-test"] for c in _cells_of(bench_run, name)] == ["PASS", "PASS"]


def test_bench_ends_with_what_to_ship_on_each_device(bench_run):
    from edgecxr.bench.tables import latency_stats

    doc = bench_run["doc"]
    (advice,) = [a for a in doc["advice"] if a["arch"] == "mobilenet_v2"]
    assert advice["device"] == "host" and advice["threads"] == 1
    candidates = [r for r in doc["rows"] if r["arch"] == "mobilenet_v2" and r["threads"] == 1 and r.get("top1_agreement") is not None
                  and r["top1_agreement"] >= 0.95 and r["delta_macro_f1_pp"] >= -2.0 and not r.get("error")]
    fastest = min(candidates, key=lambda r: latency_stats(r)["median_ms"])
    assert advice["artifact"] == fastest["artifact"]
    last = bench_run["stdout"].strip().splitlines()[-1]
    assert last.startswith(f"- Ship: on host ship {fastest['artifact']} for mobilenet_v2") and "INT8" in last


def test_each_measurement_runs_in_its_own_process(bench_run):
    pids = [r["pid"] for r in bench_run["doc"]["rows"] if "pid" in r]
    assert len(pids) == len(set(pids)) >= 10 and os.getpid() not in pids


def test_macs_agree_across_checkpoint_onnx_and_tflite(bench_run):
    macs = {r["format"]: r["macs"] for r in bench_run["doc"]["rows"] if r["arch"] == "mobilenet_v2"}
    assert macs["pytorch"] == macs["onnx"] == macs["tflite"] > 0


def test_foreign_model_gets_latency_and_size_with_accuracy_na(bench_run):
    name = bench_run["foreign"].name
    rows = _rows(bench_run["doc"], name)
    assert rows and all(r["macro_f1"] is None and r["median_ms"] > 0 for r in rows)
    assert rows[0]["macs"] == 16 * 16 * 8 * 27 and rows[0]["params"] == 8 * 27
    for cells in _cells_of(bench_run, name):
        assert cells["model"] == "foreign conv" and cells["macro-F1"] == cells["ΔF1 pp [95% CI]"] == cells["agree"] == "n/a"


def test_unloadable_file_becomes_an_error_row_not_a_crash(bench_run):
    rows = _rows(bench_run["doc"], bench_run["broken"].name)
    assert rows and all("not a loadable TFLite model" in r["error"] for r in rows)
    assert [c["self-test"] for c in _cells_of(bench_run, bench_run["broken"].name)] == ["error", "error"]
    legend = f"- Error `{rows[0]['artifact']}` ({rows[0]['runtime_name']}): {rows[0]['error']}"
    assert bench_run["stdout"].count(legend) == 1  # once, not once per thread count


def test_table_is_rebuilt_from_bench_json_alone(bench_run):
    from edgecxr.bench.tables import markdown

    assert (bench_run["out"] / "bench.md").read_text().startswith(markdown(bench_run["doc"]).strip() + "\n")
    proc = run_cli_module("edgecxr.bench.tables", str(bench_run["out"] / "bench.json"), "--format", "csv")
    assert proc.strip() == (bench_run["out"] / "bench.csv").read_text().strip()


def run_cli_module(module: str, *args: str) -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(not REFERENCE_MODELS.is_dir(), reason="../shared/reference-models not present")
def test_reference_models_benchmark_beside_our_int8(export_dir, tmp_path):
    out = tmp_path / "b"
    proc = run_cli("bench", str(export_dir / "mobilenet_v2_int8.tflite"), str(REFERENCE_MODELS), "--threads", "1",
                   "--runs", "5", "--warmup", "1", "--bootstrap", "0", "--format", "json", "--out", str(out), "--quiet")
    doc = json.loads(proc.stdout)
    by_name = {r["artifact"]: r for r in doc["rows"]}
    ref = by_name["mobilenet_v2_1.0_224_quant.tflite"]
    assert ref["precision"] == "int8" and ref["macs"] == 300_775_552 and ref["macro_f1"] is None
    assert by_name["mobilenet_v2_int8.tflite"]["macro_f1"] is not None


def test_device_rpi_on_x86_without_host_says_so_in_one_line(export_dir):
    if os.uname().machine in ("aarch64", "arm64"):
        pytest.skip("on an aarch64 machine --device rpi runs locally")
    proc = run_cli("bench", str(export_dir), "--device", "rpi", check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "no Raspberry Pi reachable" in err and "--host" in err


@pytest.mark.parametrize("args,message", [
    (["--threads", "0"], "--threads"),
    (["--threads", "one"], "--threads"),
])
def test_bad_threads_is_one_line(export_dir, args, message):
    proc = run_cli("bench", str(export_dir), *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_missing_path_and_non_model_file_are_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    for target, message in ((tmp_path / "nope", "no such file"), (tmp_path / "notes.txt", "not a model file"),
                            (tmp_path, "no model files")):
        proc = run_cli("bench", str(target), check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_pareto_front_keeps_only_undominated_points():
    from edgecxr.bench.plot import pareto_front

    pts = [(5.0, 0.90), (3.0, 0.85), (4.0, 0.80), (10.0, 0.95), (3.0, 0.70), (6.0, 0.90)]
    assert pareto_front(pts) == [1, 0, 3]


def test_onnx_graph_stats_see_through_quantize_dequantize(export_dir):
    from edgecxr.bench.graphstats import graph_stats

    fp32 = graph_stats(str(export_dir / "mobilenet_v2_fp32.onnx"))
    int8 = graph_stats(str(export_dir / "mobilenet_v2_int8.onnx"))
    assert (fp32["macs"], fp32["params"]) == (int8["macs"], int8["params"])
    assert (fp32["weight_precision"], int8["weight_precision"]) == ("fp32", "int8")


def test_folder_without_fp32_uses_explicit_reference(export_dir, tmp_path):
    only = tmp_path / "only_int8"
    only.mkdir()
    for name in ("mobilenet_v2_int8.tflite", "mobilenet_v2_int8.tflite.json"):
        shutil.copy(export_dir / name, only / name)
    proc = run_cli("bench", str(only), "--reference", str(export_dir / "mobilenet_v2_fp32.onnx"), "--threads", "1",
                   "--runs", "3", "--warmup", "0", "--bootstrap", "20", "--format", "json", "--out", str(tmp_path / "o"), "--quiet")
    row = json.loads(proc.stdout)["rows"][0]
    assert row["reference"] == "mobilenet_v2_fp32.onnx" and row["delta_macro_f1_pp"] is not None


def test_missing_split_csv_gives_accuracy_na_and_split_csv_flag_restores_it(export_dir, trained_run, tmp_path):
    import dataclasses

    import onnx

    from edgecxr.device.contract import embed_onnx_contract, read_onnx_contract

    src = export_dir / "mobilenet_v2_int8.onnx"
    contract = read_onnx_contract(str(src))
    moved = dataclasses.replace(contract, source={**contract.source, "split_csv": str(tmp_path / "gone" / "split.csv")})
    model = onnx.load(str(src))
    embed_onnx_contract(model, moved)
    dest = tmp_path / "mobilenet_v2_int8.onnx"
    onnx.save(model, str(dest))
    common = ["--threads", "1", "--runs", "2", "--warmup", "0", "--bootstrap", "10", "--format", "json", "--quiet"]
    row = json.loads(run_cli("bench", str(dest), *common, "--out", str(tmp_path / "a")).stdout)["rows"][0]
    assert row["macro_f1"] is None and "no split.csv" in row["accuracy_note"] and row["median_ms"] > 0
    row = json.loads(run_cli("bench", str(dest), *common, "--split-csv", str(trained_run / "split.csv"),
                             "--out", str(tmp_path / "b")).stdout)["rows"][0]
    assert row["macro_f1"] is not None
