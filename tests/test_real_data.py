"""End to end on the real COVID-19 Radiography images when ../shared has them (make test-slow)."""
from __future__ import annotations

import csv
import json
from collections import Counter

import pytest
from helpers import run_cli

pytestmark = pytest.mark.slow


def test_train_and_eval_on_real_cxrs_learns_and_reuses_the_split(covid_data, tmp_path):
    out = tmp_path / "sq"
    run_cli("train", "--data", str(covid_data), "--arch", "squeezenet1_1", "--out", str(out), "--epochs", "2",
            "--img-size", "64", "--quiet", timeout=1800)
    with open(out / "split.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    counts = Counter((r["label"], r["split"]) for r in rows)
    assert counts[("COVID", "test")] == counts[("Normal", "test")] == counts[("Viral_Pneumonia", "test")] == 100
    run_cli("eval", str(out / "best.pt"), "--out", str(tmp_path / "ev"), "--quiet", timeout=1800)
    rep = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert rep["n_images"] == 300 and set(rep["per_class"]) == {"COVID", "Normal", "Viral_Pneumonia"}
    assert rep["accuracy"] > 0.5  # chance is 1/3; two epochs of SqueezeNet at 64 px get well past it


def test_foreign_folder_eval_with_split_all(covid_data, tmp_path):
    """The tbcxr Normal class is not a COVID-model class: refused in one line, naming it."""
    tb = covid_data.parent / "tbcxr"
    if not tb.is_dir():
        pytest.skip("../shared/data/tbcxr not present")
    out = tmp_path / "sq"
    run_cli("train", "--data", str(covid_data), "--arch", "squeezenet1_1", "--out", str(out), "--epochs", "1",
            "--img-size", "32", "--quiet", timeout=1800)
    proc = run_cli("eval", str(out / "best.pt"), "--data", str(tb), "--split", "all", "--quiet", check=False)
    assert proc.returncode == 2 and "Tuberculosis" in proc.stderr
