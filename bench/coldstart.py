"""``edgecxr bench --cold-start N``: the cold-start columns of the bench table.

For every (file, runtime) row group of ``bench.json`` the device-side
``device/coldstart.py`` starts the runner N times as a fresh process (here, or on the
Pi over SSH) and times process start to first verdict; its median, the first
process's time, and the first warm inference go into every row of that group beside
the steady-state median, and the "Ship" advice is recomputed with them
(``bench/advice.py``). Timed at the lowest thread count of the group.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

FIELDS = ("cold_start_median_ms", "cold_start_first_process_ms", "first_inference_median_ms", "cold_start_ms", "first_inference_ms")


def coldstart_script() -> str:
    import edgecxr.device as device_pkg

    return os.path.join(os.path.dirname(os.path.abspath(device_pkg.__file__)), "coldstart.py")


def pick_image(row: dict[str, Any], workdir: str) -> str:
    """The first image of the row's evaluation data (a real chest X-ray passes the quality gate,
    so its verdict includes an inference), else a smooth synthetic one written to ``workdir``."""
    from edgecxr.device.image_io import is_image_file

    root = row.get("data_root")
    if root and os.path.isdir(root):
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                if is_image_file(name) and not name.startswith("."):
                    return os.path.join(folder, name)
    import numpy as np

    from edgecxr.device._npimage import encode_png

    path = os.path.join(workdir, "coldstart_synthetic.png")
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float64)
    gray = np.clip(128 + 90 * np.sin(xx / 23.0) * np.cos(yy / 31.0), 0, 255).astype(np.uint8)
    with open(path, "wb") as fh:
        fh.write(encode_png(gray))
    return path


def _parse(rc: int, out: str, err: str) -> dict[str, Any]:
    for line in reversed(out.strip().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("mode") == "cold_start":
            return obj
    return {"error": f"cold-start script exited {rc}: {(err.strip().splitlines() or ['no output'])[-1][:200]}"}


def cold_start_local(path: str, runtime: str, threads: int, n: int, image: str) -> dict[str, Any]:
    cmd = [sys.executable, coldstart_script(), "--model", path, "--image", image, "--runs", str(n), "--threads", str(threads),
           "--runtime", runtime]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600 * n, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return _parse(proc.returncode, proc.stdout, proc.stderr)


def _groups(doc: dict[str, Any]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    from edgecxr.device.formats import device_format_of

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in doc["rows"]:
        if r.get("error") or r.get("skipped") or not r.get("has_contract") or device_format_of(r["path"]) is None:
            continue
        groups.setdefault((r["path"], r.get("runtime_name") or "", r.get("device", "host")), []).append(r)
    return groups


def add_cold_start(doc: dict[str, Any], n: int, workdir: str, remote: dict[str, Any] | None = None, progress: bool = True) -> None:
    """Time ``n`` cold starts per (file, runtime, device) and write the columns into ``doc``'s rows (in place)."""
    from edgecxr.bench.advice import ship_advice

    groups = _groups(doc)
    pi_jobs = [(k, rows) for k, rows in groups.items() if k[2].startswith("rpi") and remote is not None]
    for (path, runtime, _device), rows in groups.items():
        if (path, runtime, _device) in dict(pi_jobs):
            continue
        threads = min(r["threads"] for r in rows)
        if progress:
            print(f"cold start: {os.path.basename(path)} [{runtime}] x{n}", file=sys.stderr)
        _store(rows, cold_start_local(path, runtime, threads, n, pick_image(rows[0], workdir)), threads)
    if pi_jobs:
        _cold_start_on_pi(pi_jobs, n, workdir, remote)
    doc.setdefault("settings", {})["cold_start_runs"] = n
    doc["advice"] = ship_advice(doc)


def _cold_start_on_pi(pi_jobs: list[tuple[tuple[str, str, str], list[dict[str, Any]]]], n: int, workdir: str,
                      remote: dict[str, Any]) -> None:
    from edgecxr.bench.remote_jobs import run_on_pi

    image = pick_image(pi_jobs[0][1][0], workdir)
    threads = {k: min(r["threads"] for r in rows) for k, rows in pi_jobs}
    jobs = [(k[0], k[1]) for k, _rows in pi_jobs]

    def argv_for(path: str, runtime: str, remote_model: str, tmp: str) -> list[str]:
        t = threads[next(k for k in threads if k[0] == path and k[1] == runtime)]
        return [f"{tmp}/device/coldstart.py", "--model", remote_model, "--image", f"{tmp}/coldstart_image{os.path.splitext(image)[1]}",
                "--runs", str(n), "--threads", str(t), "--runtime", runtime, "--python", remote["python"]]

    results, _info = run_on_pi(jobs, argv_for, extra_files={image: f"coldstart_image{os.path.splitext(image)[1]}"}, **remote)
    for (key, rows), res in zip(pi_jobs, results):
        _store(rows, _parse(*res), threads[key])


def _store(rows: list[dict[str, Any]], rec: dict[str, Any], threads: int) -> None:
    for r in rows:
        if rec.get("error"):
            r["cold_start_error"] = rec["error"]
            continue
        r.update({k: rec.get(k) for k in FIELDS})
        r["cold_start_threads"] = threads
        r["cold_start_runs"] = rec.get("ok")
