"""Helpers the tests import (fixtures stay in conftest.py, which is never imported)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
