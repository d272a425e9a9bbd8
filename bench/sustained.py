"""``edgecxr bench --sustained SECONDS``: a clinic day in miniature, on this machine or the Pi.

Each model file runs in the device runner's ``--bench --sustained`` mode
(``device/sustained.py``: one query after another, per-minute p50/p90, MLPerf's
early-stopping p90, temperature, clock, throttle bits), one file after another so
two runs never compete for the CPU. Here the records are gathered into
``sustained.json`` (raw per-query times included), ``sustained.md`` (the per-minute
tables) and ``bench_sustained.png`` (latency and temperature against time).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from edgecxr.errors import EdgecxrError

SCHEMA = "edgecxr.sustained/1"


def runner_path() -> str:
    import edgecxr.device as device_pkg

    return os.path.join(os.path.dirname(os.path.abspath(device_pkg.__file__)), "edgecxr_runner.py")


def runner_args(model: str, runtime: str, threads: int, seconds: float, window: float, warmup: int) -> list[str]:
    return ["--model", model, "--runtime", runtime, "--bench", "--sustained", f"{seconds:g}", "--window", f"{window:g}",
            "--threads", str(threads), "--warmup", str(warmup)]


def parse_record(rc: int, out: str, err: str) -> dict[str, Any]:
    """The runner's JSON object, or ``{"error": its last stderr line}``."""
    for line in reversed(out.strip().splitlines()):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("mode") == "sustained":
            return rec
    return {"error": f"runner exited {rc}: {(err.strip().splitlines() or ['no output'])[-1][:300]}"}


def run_local(model: str, runtime: str, threads: int, seconds: float, window: float, warmup: int) -> dict[str, Any]:
    cmd = [sys.executable, runner_path(), *runner_args(model, runtime, threads, seconds, window, warmup)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 3 + 600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return parse_record(proc.returncode, proc.stdout, proc.stderr)


def device_jobs(paths: list[str], runtimes: tuple[str, ...]) -> list[tuple[str, str]]:
    """(model file, runtime) for every file the device runner opens (a checkpoint is refused in one line)."""
    from edgecxr.bench.artifacts import collect
    from edgecxr.bench.local import selected_runtimes
    from edgecxr.device.formats import device_format_of

    jobs = [(a.path, r) for a in collect(paths) if device_format_of(a.path) is not None and a.contract is not None
            for r in selected_runtimes(a.path, runtimes)]
    if not jobs:
        raise EdgecxrError("--sustained: no model file the device runner opens (with its contract) among the artifacts; "
                           "convert a checkpoint first (edgecxr convert)")
    return jobs


def run_all(paths: list[str], *, runtimes: tuple[str, ...], threads: int, seconds: float, window: float, warmup: int,
            local_label: str | None, remote: dict[str, Any] | None) -> dict[str, Any]:
    """Every (file, runtime) here (``local_label``) and/or on the Pi (``remote``), one after another."""
    jobs = device_jobs(paths, runtimes)
    runs = []
    if local_label:
        for path, runtime in jobs:
            runs.append({**run_local(path, runtime, threads, seconds, window, warmup), "path": path, "artifact": os.path.basename(path),
                         "where": local_label, "runtime_name": runtime})
    if remote is not None:
        from edgecxr.bench.remote_jobs import run_on_pi

        def argv_for(_path: str, runtime: str, remote_model: str, tmp: str) -> list[str]:
            return [f"{tmp}/device/edgecxr_runner.py", *runner_args(remote_model, runtime, threads, seconds, window, warmup)]

        results, _info = run_on_pi(jobs, argv_for, timeout=seconds * 3 + 600, **remote)
        for (path, runtime), (rc, out, err) in zip(jobs, results):
            rec = parse_record(rc, out, err)
            runs.append({**rec, "path": path, "artifact": os.path.basename(path), "runtime_name": runtime,
                         "where": "rpi (EMULATED)" if rec.get("emulated") else "rpi"})
    return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "settings": {"seconds": seconds, "window_s": window, "threads": threads, "warmup": warmup}, "runs": runs}


def write_outputs(doc: dict[str, Any], out: str) -> list[str]:
    from edgecxr.bench.sustained_report import markdown, save_plot
    from edgecxr.device.atomic import write_json, write_text

    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, n) for n in ("sustained.json", "sustained.md", "bench_sustained.png")]
    write_json(paths[0], doc)
    write_text(paths[1], markdown(doc) + "\n")
    save_plot(doc, paths[2])
    return paths


def sustained_command(paths: list[str], runtimes: tuple[str, ...], threads: int, seconds: float, window: float, warmup: int,
                      local_label: str | None, remote: dict[str, Any] | None, out: str) -> None:
    """What ``edgecxr bench --sustained`` does: run, write the three files, print the report."""
    import click

    from edgecxr.bench.sustained_report import markdown

    doc = run_all(paths, runtimes=runtimes, threads=threads, seconds=seconds, window=window, warmup=warmup,
                  local_label=local_label, remote=remote)
    written = write_outputs(doc, out)
    click.echo(markdown(doc))
    click.echo(f"wrote {', '.join(written)}", err=True)
