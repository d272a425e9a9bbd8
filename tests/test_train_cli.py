"""``edgecxr train`` and ``edgecxr eval`` end to end, through the real CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from helpers import run_cli


def test_train_writes_every_run_artifact(trained_run):
    for name in ("best.pt", "last.pt", "split.csv", "metrics.json", "epochs.csv", "train.log", "curves.png"):
        assert (trained_run / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["arch"] == "mobilenet_v2"
    assert metrics["classes"] == ["Normal", "Opacity_Diffuse", "Opacity_Focal"]


def test_checkpoint_is_plain_data_loadable_with_weights_only(trained_run):
    payload = torch.load(trained_run / "best.pt", map_location="cpu", weights_only=True)
    c = payload["contract"]
    assert c["arch"] == "mobilenet_v2" and c["classes"] == ["Normal", "Opacity_Diffuse", "Opacity_Focal"]
    assert c["preprocess"]["size"] == 32 and c["input"]["shape"] == [1, 3, 32, 32]
    assert c["source"]["split_csv"].endswith("split.csv") and "torch" in c["versions"]
    assert payload["train_config"]["epochs"] == 2


def test_eval_writes_metrics_json_and_plots(trained_run, tmp_path):
    out = tmp_path / "ev"
    proc = run_cli("eval", str(trained_run / "best.pt"), "--out", str(out), "--bootstrap", "50", "--quiet")
    rep = json.loads((out / "eval.json").read_text())
    assert rep["n_images"] == 9  # 10% of 30 per class
    assert set(rep["per_class"]) == {"Normal", "Opacity_Diffuse", "Opacity_Focal"}
    assert 0 <= rep["accuracy"] <= 1 and len(rep["accuracy_ci95"]) == 2
    assert (out / "confusion_matrix.png").stat().st_size > 0 and (out / "roc.png").stat().st_size > 0
    assert "macro-F1" in proc.stdout


def test_eval_split_all_on_a_foreign_folder(trained_run, synthetic_data, tmp_path):
    run_cli("eval", str(trained_run / "best.pt"), "--data", str(synthetic_data), "--split", "all", "--out", str(tmp_path), "--bootstrap", "0", "--quiet")
    assert json.loads((tmp_path / "eval.json").read_text())["n_images"] == 90


def test_resume_continues_from_last_epoch(trained_run, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(trained_run, run)
    data = json.loads((run / "metrics.json").read_text())["config"]["data"]
    run_cli("train", "--data", data, "--arch", "mobilenet_v2", "--out", str(run), "--epochs", "3", "--img-size", "32",
            "--batch-size", "16", "--resume", "--quiet")
    rows = (run / "epochs.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 and rows[-1].startswith("3,")
    assert (run / "split.csv").read_text() == (trained_run / "split.csv").read_text()


def test_weights_flag_starts_from_a_local_checkpoint(trained_run, synthetic_data, tmp_path):
    run_cli("train", "--data", str(synthetic_data), "--arch", "mobilenet_v2", "--out", str(tmp_path / "ft"), "--epochs", "1",
            "--img-size", "32", "--weights", str(trained_run / "best.pt"), "--freeze-backbone", "--quiet")
    before = torch.load(trained_run / "best.pt", weights_only=True)["state_dict"]
    after = torch.load(tmp_path / "ft" / "best.pt", weights_only=True)["state_dict"]
    key = "backbone.0.0.0.weight"  # first conv: frozen, so it must equal the loaded weights
    assert torch.equal(before[key], after[key])
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])


def test_a_checkpoint_of_another_architecture_is_refused_not_half_loaded(trained_run, synthetic_data, tmp_path):
    """A MobileNetV2 checkpoint shares its head's shape with EfficientNet-Lite0 (3 x 1280): loading
    what fits used to start a Lite0 run from random weights without a word."""
    proc = run_cli("train", "--data", str(synthetic_data), "--arch", "efficientnet_lite0", "--out", str(tmp_path / "x"), "--epochs", "1",
                   "--img-size", "32", "--weights", str(trained_run / "best.pt"), "--quiet", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is a mobilenet_v2 checkpoint, not efficientnet_lite0: pass --arch mobilenet_v2" in proc.stderr
    plain = tmp_path / "state.pt"  # a bare state dict has no arch: most of the model must still fit
    torch.save(torch.load(trained_run / "best.pt", weights_only=True)["state_dict"], plain)
    proc = run_cli("train", "--data", str(synthetic_data), "--arch", "efficientnet_lite0", "--out", str(tmp_path / "y"), "--epochs", "1",
                   "--img-size", "32", "--weights", str(plain), "--quiet", check=False)
    assert proc.returncode == 2 and "tensors fit; is it for another architecture than efficientnet_lite0?" in proc.stderr


def test_pretrained_offline_fails_with_one_line_naming_weights_flag(synthetic_data, tmp_path):
    proc = run_cli("train", "--data", str(synthetic_data), "--arch", "mobilenet_v2", "--pretrained", "--out", str(tmp_path / "p"),
                   "--epochs", "1", "--img-size", "32", "--quiet", check=False,
                   env={"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "TORCH_HOME": str(tmp_path / "th")})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("Error")]
    assert len(lines) == 1 and "--weights" in lines[0] and "Traceback" not in proc.stderr


def _bad_dataset(tmp_path, kind: str):
    root = tmp_path / kind
    for c in ("A", "B"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            cv2.imwrite(str(root / c / f"{i}.png"), np.random.default_rng(i).integers(0, 255, (24, 24), dtype=np.uint8))
    if kind == "empty_class":
        (root / "C").mkdir()
    elif kind == "one_class":
        shutil.rmtree(root / "B")
    elif kind == "non_image":
        (root / "A" / "notes.txt").write_text("not an image")
        (root / "A" / "fake.png").write_text("not a png either")
    elif kind == "corrupt":
        (root / "B" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    return root


@pytest.mark.parametrize("kind,message", [("empty_class", "hold no images"), ("one_class", "only one class")])
def test_bad_dataset_folders_give_one_clear_line(tmp_path, kind, message):
    proc = run_cli("train", "--data", str(_bad_dataset(tmp_path, kind)), "--out", str(tmp_path / "o"), "--img-size", "32", "--quiet", check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "best.pt").exists()


@pytest.mark.parametrize("kind", ["non_image", "corrupt"])
def test_unreadable_files_are_skipped_counted_and_logged(tmp_path, kind):
    out = tmp_path / "o"
    proc = run_cli("train", "--data", str(_bad_dataset(tmp_path, kind)), "--out", str(out), "--img-size", "32", "--epochs", "1",
                   "--split", "50/25/25", "--quiet")
    skipped = json.loads((out / "metrics.json").read_text())["skipped_files"]
    bad = {"non_image": "A/fake.png", "corrupt": "B/bad.png"}[kind]
    assert [s["file"] for s in skipped] == [bad]
    assert bad in (out / "train.log").read_text() and "1 unreadable files skipped" in proc.stdout


def test_eval_on_a_corrupt_model_file_is_one_line(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    proc = run_cli("eval", str(bad), check=False)
    assert proc.returncode == 2 and "not a readable checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_architecture_is_refused_by_the_cli(synthetic_data, tmp_path):
    proc = run_cli("train", "--data", str(synthetic_data), "--arch", "alexnet", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2 and "alexnet" in proc.stderr


def test_torchrun_two_cpu_processes_produce_a_valid_checkpoint(synthetic_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", "-m", "edgecxr", "train",
           "--data", str(synthetic_data), "--arch", "squeezenet1_1", "--out", str(out), "--epochs", "1", "--img-size", "32",
           "--batch-size", "8", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    payload = torch.load(out / "best.pt", weights_only=True)
    assert payload["contract"]["arch"] == "squeezenet1_1"
    run_cli("eval", str(out / "best.pt"), "--bootstrap", "0", "--quiet")
