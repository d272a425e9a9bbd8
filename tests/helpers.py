"""Helpers the tests import (fixtures stay in conftest.py, which is never imported)."""
from __future__ import annotations

import os
import shutil
import site
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


def run_bare_runner(tmp_path: Path, *args: str, hide: tuple[str, ...] = (), timeout: int = 300) -> subprocess.CompletedProcess:
    """``device/`` copied alone and run with ``python -S`` (site-packages without .pth files, so no
    editable edgecxr): what a Pi with numpy and a runtime has. Each module in ``hide`` fails to
    import, as on a device that lacks it."""
    root = tmp_path / "bare"
    if not (root / "device").exists():
        shutil.copytree(ROOT / "device", root / "device", ignore=shutil.ignore_patterns("__pycache__"))
    paths = [site.getsitepackages()[0]]
    if hide:
        hidden = root / ("hide_" + "_".join(hide))
        hidden.mkdir(exist_ok=True)
        for name in hide:
            (hidden / f"{name}.py").write_text(f"raise ImportError('{name} hidden for this test')\n")
        paths.insert(0, str(hidden))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return subprocess.run([sys.executable, "-S", str(root / "device" / "edgecxr_runner.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=str(root), env=env)
