"""Fixtures shared by the bench test files (loaded with ``pytest_plugins``, so a
session fixture is built once even when both files run)."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_cli
from sshd import sshd_server  # noqa: F401  (re-exported fixture)


@pytest.fixture(scope="session")
def export_dir(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench_export") / "export"
    # --keep-degraded: these tests measure files, they do not judge a 2-epoch 32 px model's INT8 accuracy
    run_cli("convert", str(trained_run / "best.pt"), "--out", str(out), "--int8", "--formats", "onnx,tflite", "--keep-degraded")
    return out
