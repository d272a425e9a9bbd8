"""``edgecxr bench``: size, accuracy change and latency of every artifact, in one table.

Every number says where it came from: each row carries its device string, runtime
and version, and ``bench.json`` keeps the raw per-run times, so a table can be
rebuilt (``python -m edgecxr.bench.tables bench.json``) and re-summarised later.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time

import click

from edgecxr.bench.coldstart import add_cold_start
from edgecxr.bench.sustained import sustained_command
from edgecxr.bench.tables import COLUMN_SETS, TABLE_FORMATS
from edgecxr.errors import EdgecxrError

EPILOG = """\b
Examples:
  edgecxr bench runs/mnv2/export --threads 1,2
  edgecxr bench runs/mnv2/export --runtimes all --columns all     # every runtime, every column
  edgecxr bench runs/mnv2/export ../shared/reference-models --format csv
  edgecxr bench model_int8.tflite --reference runs/mnv2/export/mobilenet_v2_fp32.onnx
  edgecxr bench runs/mnv2/export --device rpi --host pi@raspberrypi.local --identity ~/.ssh/id_ed25519
  edgecxr bench runs/mnv2/export --device host --device rpi --host pi@10.0.0.7:2222   # both in one table
"""


def parse_threads(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise EdgecxrError(f"--threads {text!r}: expected numbers like 1,2") from exc
    if not vals or any(v < 1 for v in vals):
        raise EdgecxrError(f"--threads {text!r}: expected positive numbers like 1,2")
    return list(dict.fromkeys(vals))


def parse_runtimes(text: str) -> list[str]:
    from edgecxr.device.formats import RUNTIMES

    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n != "all" and n not in RUNTIMES]
    if unknown:
        raise EdgecxrError(f"--runtimes {text!r}: unknown runtime {unknown[0]!r}; choose from {', '.join(sorted(RUNTIMES))} or all")
    return names


def runtime_choices() -> str:
    """The runtimes per format, from the device's table (a runtime registered there appears here)."""
    from edgecxr.device.formats import DEVICE_FORMATS

    return "; ".join(f"{f.name}: {', '.join(f.runtimes)}" for f in DEVICE_FORMATS.values() if f.runtimes)


def is_pi_like() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


@click.command("bench", epilog=EPILOG)
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--data", type=click.Path(file_okay=False), help="Dataset folder (default: the one each model was trained on).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val", "all"]),
              help="Evaluation images: the run's held-out split, or 'all' of a never-split folder.")
@click.option("--split-csv", type=click.Path(dir_okay=False, exists=True),
              help="split.csv to use instead of the one each model records (e.g. after moving a run folder).")
@click.option("--threads", default="1,2", show_default=True, help="Comma-separated thread counts, each set explicitly on the runtime.")
@click.option("--runtimes", default="", help="Comma-separated runtimes to open each file with, among those that open its format "
              f"({runtime_choices()}), or 'all'. Default: each format's first runtime. One row per runtime.")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(0), help="Untimed runs before timing.")
@click.option("--runs", default=100, show_default=True, type=click.IntRange(1), help="Timed runs (at least).")
@click.option("--min-seconds", default=0.0, show_default=True, type=click.FloatRange(0), help="Keep timing until this long has passed.")
@click.option("--reference", type=click.Path(dir_okay=False, exists=True), help="FP32 model to compare against (default: auto-detected per architecture).")
@click.option("--device", "devices", multiple=True, type=click.Choice(["host", "rpi"]),
              help="Where to time: this machine, a Raspberry Pi (local on an aarch64 Pi, else via --host); repeat for both.  [default: host]")
@click.option("--host", "ssh_host", help="USER@ADDR[:PORT] of the Pi (implies --device rpi).")
@click.option("--identity", type=click.Path(dir_okay=False, exists=True), help="SSH private key for --host.")
@click.option("--known-hosts", type=click.Path(dir_okay=False), help="known_hosts file checked for the Pi's host key [default: ~/.ssh/known_hosts].")
@click.option("--accept-new-host-key", is_flag=True, help="Trust and record the Pi's host key if it is not yet known (a changed key is always refused).")
@click.option("--remote-python", default="python3", show_default=True, help="Python interpreter on the Pi.")
@click.option("--remote-images", default=10, show_default=True, type=click.IntRange(1), help="Test images copied to the Pi (timed input + agreement check).")
@click.option("--out", default="bench_out", show_default=True, type=click.Path(file_okay=False), help="Folder for bench.json, bench.csv, bench.md, bench.png.")
@click.option("--format", "fmt", default="text", show_default=True, type=click.Choice(TABLE_FORMATS),
              help="What stdout gets: text (aligned, for a terminal), md (Markdown), csv, json, or readme (one row per artifact, threads side by side).")
@click.option("--columns", default="compact", show_default=True, type=click.Choice(COLUMN_SETS),
              help="Columns of the text/md table and bench.md. compact: model, format, precision, runtime, threads, MB, macro-F1, "
              "its change against FP32 with 95% CI, top-1 agreement, median and p90 ms, self-test (~120 characters). all: adds device, "
              "params, MACs, accuracy and AUC with CIs, mean ± std, p99, min, load time, peak RSS. bench.csv and bench.json always hold every column.")
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(0), help="Bootstrap resamples for the 95% CIs.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--sustained", type=click.FloatRange(min=1), is_flag=False, flag_value=600.0, metavar="[SECONDS]",
              help="Instead of the table: each model file under sustained load for SECONDS (600 if none given; MLPerf "
              "SingleStream), at the first --threads value, one file after another; per-minute p50/p90, early-stopping p90, "
              "CPU temperature, clock and Pi throttle bits -> sustained.json, sustained.md, bench_sustained.png.")
@click.option("--window", default=60.0, show_default=True, type=click.FloatRange(min=1), help="--sustained: seconds per statistics window.")
@click.option("--cold-start", "cold_start", default=0, show_default=True, type=click.IntRange(0),
              help="Also time N fresh runner processes per file and runtime (process start to first verdict: import, model "
              "load, self-test, first inference) and the first inference in each; median in the table. 10 is a good N.")
def bench_command(artifacts: tuple[str, ...], data: str | None, split: str, split_csv: str | None, threads: str, runtimes: str, warmup: int, runs: int,
                  min_seconds: float, reference: str | None, devices: tuple[str, ...], ssh_host: str | None,
                  identity: str | None, known_hosts: str | None, accept_new_host_key: bool, remote_python: str,
                  remote_images: int, out: str, fmt: str, columns: str, bootstrap: int, quiet: bool,
                  sustained: float | None = None, window: float = 60.0, cold_start: int = 0) -> None:
    """Benchmark checkpoints, exported model files (every format in convert's table), or
    folders written by `edgecxr convert`.

    Per artifact, runtime and thread count: format, precision, runtime, file size, parameters,
    MACs, accuracy / macro-F1 / AUC with 95% bootstrap CIs, the macro-F1 change
    against the FP32 reference (paired CI) and top-1 agreement, latency
    (median, mean, std, p90, p99, min) after warm-up, load time and peak memory,
    each in its own process with its threads set on the runtime. Stdout shows the
    compact columns (--columns all for the rest); bench.csv and bench.json keep them
    all. Files without a contract (foreign models) get latency and size; their
    accuracy columns say n/a.
    """
    from edgecxr.bench.report import build_document, write_outputs

    thread_list = parse_threads(threads)
    runtime_list = parse_runtimes(runtimes)
    wanted = list(dict.fromkeys(devices)) or (["rpi"] if ssh_host else ["host"])
    if ssh_host and "rpi" not in wanted:
        wanted.append("rpi")
    remote_needed = "rpi" in wanted and not (is_pi_like() and not ssh_host)
    if remote_needed and not ssh_host:
        raise EdgecxrError(f"--device rpi: no Raspberry Pi reachable (this machine is {platform.machine()}); "
                           "run edgecxr bench on the Pi itself, or point at one with --host USER@ADDR[:PORT] [--identity KEY]")
    settings = {"threads": thread_list, "runtimes": runtime_list, "warmup": warmup, "runs": runs, "min_seconds": min_seconds, "split": split,
                "bootstrap": bootstrap, "data": os.path.abspath(data) if data else None,
                "split_csv": os.path.abspath(split_csv) if split_csv else None}
    remote = dict(host=ssh_host, identity=identity, known_hosts=known_hosts, accept_new=accept_new_host_key,
                  python=remote_python, n_images=remote_images) if remote_needed else None
    if remote is not None:
        from edgecxr.bench.remote import preflight

        preflight(**remote, paths=list(artifacts), runtimes=tuple(runtime_list or ()))
    local_label = "rpi" if (not remote_needed and "rpi" in wanted and "host" not in wanted) else "host"
    if sustained is not None:  # instead of the table
        return sustained_command(list(artifacts), tuple(runtime_list), thread_list[0], sustained, window, warmup,
                                 local_label if ("host" in wanted or not remote_needed) else None, remote, out)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="edgecxr-bench-") as workdir:
        doc = build_document(
            paths=list(artifacts), data=data, split=split, split_csv=split_csv, settings=settings, reference=reference,
            local="host" in wanted or (("rpi" in wanted) and not remote_needed),
            local_label=local_label,
            remote=remote,
            workdir=workdir, progress=not quiet)
        if cold_start:  # the cold-start columns, measured after the table's own runs
            add_cold_start(doc, cold_start, workdir, remote=remote, progress=not quiet)
    doc["command"] = ["edgecxr", "bench", *sys.argv[2:]] if len(sys.argv) > 1 and sys.argv[1] == "bench" else None
    doc["seconds"] = round(time.time() - started, 1)
    paths = write_outputs(doc, out, columns)
    from edgecxr.bench.tables import render

    click.echo(render(doc, fmt, columns))
    click.echo(f"wrote {', '.join(paths)}", err=True)
