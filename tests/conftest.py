"""Shared fixtures: synthetic data that always exists, real data when ../shared has it,
and one small trained checkpoint per session for the stages downstream of training."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
COVID = SHARED_DATA / "covid-radiography"


def run_cli(*args: str, check: bool = True, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``edgecxr ARGS`` in a subprocess, exactly as a user would."""
    proc = subprocess.run([sys.executable, "-m", "edgecxr", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"edgecxr {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """3 classes x 30 synthetic 64 px PNGs (edgecxr.synthetic)."""
    from edgecxr.synthetic import write_dataset

    return Path(write_dataset(str(tmp_path_factory.mktemp("synthetic") / "data"), n_per_class=30, size=64))


@pytest.fixture(scope="session")
def trained_run(synthetic_data, tmp_path_factory) -> Path:
    """A MobileNetV2 trained for 2 short epochs at 32 px: the run folder (best.pt, split.csv)."""
    out = tmp_path_factory.mktemp("run") / "mnv2"
    run_cli("train", "--data", str(synthetic_data), "--arch", "mobilenet_v2", "--out", str(out), "--epochs", "2",
            "--img-size", "32", "--batch-size", "16", "--quiet")
    return out


@pytest.fixture(scope="session")
def covid_data() -> Path:
    if not COVID.is_dir():
        pytest.skip("real CXRs not present (../shared/data/covid-radiography); synthetic tests cover the logic")
    return COVID
