#!/usr/bin/env python3
"""Helper copied to the Pi beside ``device/``: standard library only.

``check``: which Python and packages the Pi has, as one JSON line, so the host can
say exactly what to install before copying anything large.
``run OUT -- RUNNER_ARGS...``: runs ``edgecxr_runner.py`` in this process with its
stdout sent to the file OUT (the host fetches it), then appends this process's peak
resident set (VmHWM), which the runner itself does not report.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import runpy
import sys


def check() -> dict:
    out: dict = {"python": platform.python_version(), "machine": platform.machine(), "executable": sys.executable}
    for name, module in (("numpy", "numpy"), ("ai-edge-litert", "ai_edge_litert.interpreter"),
                         ("tflite-runtime", "tflite_runtime.interpreter"), ("onnxruntime", "onnxruntime"), ("opencv", "cv2")):
        try:
            mod = __import__(module, fromlist=["_"])
            out[name] = str(getattr(mod, "__version__", "") or _dist_version(name))
        except Exception:  # any import failure (missing, ABI mismatch) means not usable
            out[name] = None
    return out


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # metadata missing: installed but unversioned
        return "?"


def peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run(out_path: str, runner_args: list[str]) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    runner = os.path.join(here, "device", "edgecxr_runner.py")
    sys.argv = [runner, *runner_args]
    code = 0
    with open(out_path, "w", encoding="utf-8") as fh, contextlib.redirect_stdout(fh):
        try:
            runpy.run_path(runner, run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    with open(out_path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"probe_peak_rss_mb": peak_rss_mb(), "probe_exit": code}) + "\n")
    return code


def main(argv: list[str]) -> int:
    if argv[:1] == ["check"]:
        print(json.dumps(check()))
        return 0
    if len(argv) >= 3 and argv[0] == "run" and argv[2] == "--":
        return run(argv[1], argv[3:])
    print("usage: remote_probe.py check | run OUT -- RUNNER_ARGS...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
