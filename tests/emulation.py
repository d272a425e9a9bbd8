"""Run this venv's own Python on an emulated CPU, to test CPU-dependent INT8 behaviour
explicitly instead of by accident of the host (``qemu-x86_64-static -cpu Haswell``:
AVX2, no AVX-512, no VNNI). CPUID is emulated, so ONNX Runtime and XNNPACK pick
their AVX2 kernels exactly as on an AVX2-only EPYC.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

QEMU_X86 = shutil.which("qemu-x86_64-static")


def run_on_haswell(args: list[str], timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python ARGS`` under qemu -cpu Haswell; skips the test (with the reason) where qemu is missing."""
    if QEMU_X86 is None:
        pytest.skip("qemu-x86_64-static not installed (apt-get install qemu-user-static; .ci/run does)")
    proc = subprocess.run([QEMU_X86, "-cpu", "Haswell", sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    proc.stderr = "\n".join(line for line in proc.stderr.splitlines() if "TCG doesn't support" not in line)
    return proc
