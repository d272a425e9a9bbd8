#!/usr/bin/env python3
"""Helper copied to the Pi beside ``device/``: standard library only.

``check [RUNTIMES_JSON]``: which Python, numpy and runtimes the Pi has, as one JSON
line, so the host can say exactly what to install before copying anything large.
The host sends its runtime table (``{"litert": ["ai_edge_litert",
"tflite_runtime.interpreter"], ...}``: any one module importable means the runtime is
there) so this file needs no copy of ``device/runtimes/`` and no list of its own.
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


def check(runtimes: dict[str, list[str]]) -> dict:
    """``runtimes``: for each runtime "module version" of the first of its modules that
    imports here, else None. Imported, not just found: an ABI mismatch (a numpy 1
    wheel under numpy 2) must count as missing."""
    out: dict = {"python": platform.python_version(), "machine": platform.machine(), "executable": sys.executable,
                 "numpy": _importable("numpy"), "opencv": _importable("cv2"), "runtimes": {}}
    for name, modules in runtimes.items():
        out["runtimes"][name] = next((f"{m} {v}" for m in modules for v in [_importable(m)] if v), None)
    return out


def _importable(module: str) -> str | None:
    """The version of ``module``'s package when it imports, else None."""
    try:
        __import__(module)
    except Exception:  # any import failure (missing, ABI mismatch, a missing shared library) means not usable
        return None
    top = sys.modules[module.split(".")[0]]
    return str(getattr(top, "__version__", "") or _dist_version(top.__name__))


def _dist_version(top: str) -> str:
    try:
        from importlib.metadata import packages_distributions, version

        return version(packages_distributions().get(top, [top])[0])
    except Exception:  # metadata missing, or Python < 3.10: installed but unversioned
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
    if argv[:1] == ["check"] and len(argv) <= 2:
        print(json.dumps(check(json.loads(argv[1]) if len(argv) == 2 else {})))
        return 0
    if len(argv) >= 3 and argv[0] == "run" and argv[2] == "--":
        return run(argv[1], argv[3:])
    print("usage: remote_probe.py check [RUNTIMES_JSON] | run OUT -- RUNNER_ARGS...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
