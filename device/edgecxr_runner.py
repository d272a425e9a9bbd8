#!/usr/bin/env python3
"""Run an edgecxr model on a Raspberry Pi (or anywhere) with numpy and a TFLite
interpreter alone.

Copy the ``device/`` folder and a model (``.tflite`` with its ``.tflite.json``
sidecar, or an ``.onnx`` with its embedded contract) to the Pi and run::

    python3 edgecxr_runner.py --model mobilenet_v2_int8.tflite --image chest.png
    python3 edgecxr_runner.py --model m.tflite --dir xrays/ --json --csv out.csv
    python3 edgecxr_runner.py --model m.tflite --camera 0 --every 5
    python3 edgecxr_runner.py --model m.tflite --bench --warmup 10 --runs 100
    python3 edgecxr_runner.py --model m.onnx --selftest

The contract supplies class names, preprocessing and tensor layout/quantization,
so the Pi computes what ``edgecxr eval`` computes on the workstation. Every
user-fixable problem is one line on stderr and exit code 2.

Exit codes: 0 when every image was processed, whatever the verdict: an answer, a
referral ("uncertain between COVID and Normal: refer", "unfamiliar image (score S > T):
refer") or a refusal ("image rejected: <reason>" before the model, "not a chest X-ray
(score S > T): no prediction" after it) are results, stated in the text line, the JSON
``action``/``reason``/``reason_kind`` fields and the CSV ``action``/``reason`` columns
(refused rows have no label and no probabilities). 2: a usage error or an unreadable
file (``--image``), or no readable image in ``--dir``. 3: the self-test failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script, e.g. from a bare copy of device/ on a Pi: import this folder as a package
    import importlib.util

    _here = os.path.dirname(os.path.abspath(__file__))
    _spec = importlib.util.spec_from_file_location("edgecxr_device", os.path.join(_here, "__init__.py"), submodule_search_locations=[_here])
    _package = importlib.util.module_from_spec(_spec)
    sys.modules["edgecxr_device"] = _package
    _spec.loader.exec_module(_package)
    __package__ = "edgecxr_device"

from .backends import ModelLoadError, open_backend
from .camera import CameraError, open_capture, run_camera
from .classify import Classifier
from .contract import ContractError
from .decision import DecisionError
from .formats import RUNTIMES, model_suffixes
from .gated import classify_path, gated_record, gated_text
from .image_io import ImageError, is_image_file, load_gray
from .latency import latency_record, summarize, time_invocations
from .runner_io import describe, emit, warn, write_csv
from .runtime_help import list_runtimes_lines, model_help, runtime_help
from .selftest import run_selftest, selftest_line
from .signature import TrustError
from .sysinfo import device_info, device_string
from .trust import TrustSession, add_trust_arguments, open_session
from .trust_commands import TRUST_COMMANDS, run_trust_command

EXIT_USAGE = 2
EXIT_SELFTEST_FAILED = 3


class RunnerError(ValueError):
    """A user-fixable problem with the command line or its inputs."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgecxr_runner.py",
        description=(f"Classify chest X-rays with an edgecxr model ({', '.join(model_suffixes())}). Needs numpy and a TFLite "
                     "interpreter; the other runtimes are optional (--list-runtimes)."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  %(prog)s --model mobilenet_v2_int8.tflite --image chest.png\n"
            "  %(prog)s --model m.tflite --dir xrays/ --json --csv predictions.csv\n"
            "  %(prog)s --model m.tflite --camera 0 --every 5 --max-frames 1000\n"
            "  %(prog)s --model m.tflite --bench --warmup 10 --runs 100 --threads 4\n"
            "  %(prog)s --model m.tflite --bench --sustained 600 --threads 4   # a clinic day: per-minute p90, heat, throttling\n"
            "  %(prog)s --model m.onnx --selftest      # golden images: does this CPU compute the model? exit 3 if not\n"
            "  %(prog)s serve --model m.tflite --port 11112 --outbox out/   # DICOM in, TID 1500 SR out (serve --help)\n"
        ),
    )
    p.add_argument("--model", help=model_help())
    src = p.add_mutually_exclusive_group()
    src.add_argument("--image", help="classify one image file (PNG, JPEG, BMP, DICOM)")
    src.add_argument("--dir", help="classify every image under a folder (recursively) and write a CSV")
    src.add_argument("--camera", metavar="INDEX", help="classify camera frames (OpenCV index, or a video file)")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--threads", type=int, help="interpreter threads (default: the runtime's choice)")
    p.add_argument("--runtime", choices=list(RUNTIMES), help=runtime_help())
    p.add_argument("--list-runtimes", action="store_true", help="list every runtime, the files it opens and whether it is installed here")
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout (file, label, probabilities, latency_ms)")
    p.add_argument("--csv", help="with --dir: where to write the CSV (default ./predictions_<dir>.csv)")
    p.add_argument("--bench", action="store_true", help="time invoke() and print latency statistics as JSON (after the self-test)")
    p.add_argument("--selftest", action="store_true",
                   help="run the golden images stored in the model with this device's preprocessing and runtime; exit 3 outside "
                        "tolerance. Runs before --image/--dir/--camera, which then only start if it passes")
    p.add_argument("--ignore-cpu-check", action="store_true",
                   help="open a model even where its contract says this CPU computes it wrong (to measure how wrong)")
    add_trust_arguments(p)  # --trust, --audit-log, --device-key, --drift-window (trust.py)
    p.add_argument("--warmup", type=int, default=10, help="--bench: untimed warm-up runs (default 10)")
    p.add_argument("--runs", type=int, default=100, help="--bench: timed runs (default 100)")
    p.add_argument("--min-seconds", type=float, default=0.0, help="--bench: keep timing at least this long")
    p.add_argument("--sustained", type=float, metavar="SECONDS",
                   help="--bench: one query after another for SECONDS (MLPerf SingleStream: 600), then per-minute p50/p90, "
                        "the early-stopping p90, CPU temperature, clock and Pi throttle bits, as one JSON object")
    p.add_argument("--window", type=float, default=60.0, metavar="SECONDS", help="--sustained: statistics per window of this length (default 60)")
    p.add_argument("--max-frames", type=int, help="--camera: stop after this many frames")
    p.add_argument("--every", type=int, default=1, help="--camera: classify every Nth frame (default 1)")
    p.add_argument("--max-fps", type=float, help="--camera: classify at most this many frames per second")
    return p


def _check_args(a: argparse.Namespace) -> None:
    if not a.model:
        raise RunnerError("give --model MODEL (see --help for the files each runtime opens, --list-runtimes for what is installed)")
    if not (a.image or a.dir or a.camera is not None or a.bench or a.selftest):
        raise RunnerError("give one of --image FILE, --dir DIR, --camera INDEX (or --bench or --selftest alone)")
    for name in ("top_k", "every", "runs"):
        if getattr(a, name) < 1:
            raise RunnerError(f"--{name.replace('_', '-')} must be at least 1")
    if a.sustained is not None and (not a.bench or a.sustained <= 0 or a.window <= 0):
        raise RunnerError("--sustained SECONDS needs --bench, and SECONDS and --window must be positive")
    if a.warmup < 0:
        raise RunnerError("--warmup must be 0 or more")
    if a.threads is not None and a.threads < 1:
        raise RunnerError("--threads must be at least 1")
    if a.max_frames is not None and a.max_frames < 1:
        raise RunnerError("--max-frames must be at least 1")
    if a.bench and a.camera is not None:
        raise RunnerError("--bench times a still image; use it with --image, --dir or alone, not --camera")
    if a.csv and not a.dir:
        raise RunnerError("--csv is for --dir")


def _list_images(folder: str) -> tuple[list[str], int]:
    if not os.path.isdir(folder):
        raise RunnerError(f"--dir {folder}: no such folder")
    images, others = [], 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.startswith("."):
                continue
            if is_image_file(name):
                images.append(os.path.join(root, name))
            else:
                others += 1
    return images, others


def verdict_counts(rows: list[dict[str, Any]]) -> str:
    """The --dir summary's verdicts by reason, e.g. ``(12 answered, 3 refer: 2 uncertain, 1 unfamiliar;
    2 refused: 1 image quality, 1 not a chest X-ray)``. Refusals and referrals are results, not errors:
    the exit code stays 0 (see the module docstring)."""
    kinds = [r.get("reason_kind") for r in rows if "error" not in r and r.get("action")]
    if not kinds:
        return ""
    n = kinds.count
    refer = n("uncertain") + n("unfamiliar")
    refused = n("quality") + n("not_cxr") + n("intended_use")
    return (f" ({n('answer')} answered, {refer} refer: {n('uncertain')} uncertain, {n('unfamiliar')} unfamiliar; "
            f"{refused} refused: {n('quality')} image quality, {n('not_cxr')} not a chest X-ray, "
            f"{n('intended_use')} outside intended use)")


def run_image(clf: Classifier, a: argparse.Namespace, session: TrustSession) -> int:
    pred, gate, gray = classify_path(clf, a.image)
    rec = gated_record(pred, gate, a.top_k)
    session.listener(rec, gray, a.image)  # the audit line is on disk before the result is shown
    emit(rec if a.json else gated_text(pred, gate, a.top_k))
    return 0


def run_dir(clf: Classifier, a: argparse.Namespace, session: TrustSession) -> int:
    files, others = _list_images(a.dir)
    if not files:
        raise RunnerError(f"--dir {a.dir}: no image files (.png, .jpg, .jpeg, .bmp, .dcm) in it")
    rows: list[dict[str, Any]] = []
    for path in files:
        rel = os.path.relpath(path, a.dir)
        try:
            pred, gate, gray = classify_path(clf, path, rel)  # DICOM: the intended-use gate first
        except ImageError as exc:
            warn(f"skipped {exc}")
            rows.append({"file": rel, "error": str(exc)})
            continue
        rows.append(gated_record(pred, gate, a.top_k))
        session.listener(rows[-1], gray, path)
        emit(rows[-1] if a.json else gated_text(pred, gate, a.top_k))
    csv_path = a.csv or f"predictions_{os.path.basename(os.path.normpath(a.dir)) or 'dir'}.csv"
    write_csv(csv_path, clf.classes, rows)
    ok = sum(1 for r in rows if "error" not in r)
    note = f", ignored {others} non-image file(s)" if others else ""
    warn(f"{ok} image(s) classified{verdict_counts(rows)}, {len(rows) - ok} skipped{note}; wrote {csv_path}")
    if ok == 0:
        raise RunnerError(f"--dir {a.dir}: none of the {len(rows)} image files could be read")
    return 0


def _bench_gray(clf: Classifier, a: argparse.Namespace) -> tuple[np.ndarray, str]:
    """The still image to time: --image, the first of --dir, or a smooth synthetic one
    (realistic value ranges for INT8 inputs, unlike zeros or noise)."""
    if a.image:
        return load_gray(a.image), a.image
    if a.dir:
        files, _ = _list_images(a.dir)
        for f in files:
            try:
                return load_gray(f), f
            except ImageError:
                continue
        raise RunnerError(f"--dir {a.dir}: no readable image to benchmark with")
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float64)
    gray = 128 + 90 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    return np.clip(gray, 0, 255).astype(np.uint8), "synthetic"


def run_bench(clf: Classifier, a: argparse.Namespace, load_ms: float, selftest: dict[str, Any]) -> int:
    gray, source = _bench_gray(clf, a)
    b = clf.backend
    prepared = b.prepare(clf.tensor(gray))
    if a.sustained is not None:
        return run_sustained_bench(clf, a, prepared, source, load_ms, selftest)
    times = time_invocations(b.invoke, prepared, warmup=a.warmup, runs=a.runs, min_seconds=a.min_seconds)
    stages: dict[str, list[float]] = {}
    for _ in range(min(a.runs, 20)):  # the runner's own work around invoke(), per stage
        pred = clf.classify_gray(gray, source) if source == "synthetic" else clf.classify_file(source)
        for k, v in pred.timings_ms.items():
            stages.setdefault(k, []).append(v)
    overhead = {k: float(np.median(v)) for k, v in stages.items() if k != "inference_ms"}
    overhead["total_ms"] = float(sum(overhead.values()))
    info = device_info(b.runtime)
    out = {**latency_record(times, threads=a.threads, warmup=a.warmup, load_ms=round(load_ms, 3)),
           "model": os.path.basename(b.path), "arch": b.contract.arch, "format": b.format, "precision": b.contract.precision,
           "runtime": b.runtime, "input_shape": list(b.input_shape), "input_dtype": b.input_dtype, "image": source,
           "device": device_string(b.runtime, info), "device_info": info, "emulated": info["emulated"],
           "runner_overhead_ms": {k: round(v, 4) for k, v in overhead.items()}, "selftest": selftest,
           "end_to_end_median_ms": round(summarize(times)["median_ms"] + overhead["total_ms"], 4)}
    if info["emulated"]:
        warn("running under emulation: these timings say nothing about the device's latency")
    emit(out)
    return 0


def run_sustained_bench(clf: Classifier, a: argparse.Namespace, prepared: np.ndarray, source: str, load_ms: float,
                        selftest: dict[str, Any]) -> int:
    """``--bench --sustained``: device/sustained.py's per-query loop and per-minute summary, as one JSON object."""
    from .sustained import run_sustained

    b = clf.backend
    warn(f"sustained load for {a.sustained:g} s (one query after another); statistics per {a.window:g} s")
    out = run_sustained(b.invoke, prepared, a.sustained, window_s=a.window, warmup=a.warmup)
    info = device_info(b.runtime)
    out.update({"threads": a.threads, "load_ms": round(load_ms, 3), "model": os.path.basename(b.path), "arch": b.contract.arch,
                "format": b.format, "precision": b.contract.precision, "runtime": b.runtime, "image": source,
                "device": device_string(b.runtime, info), "device_info": info, "emulated": info["emulated"], "selftest": selftest})
    if info["emulated"]:
        warn("running under emulation: these timings say nothing about the device's latency")
    emit(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":  # the clinic service has its own flags (device/service/cli.py); trust and page: trust_commands.py
        from .trust_commands import run_serve

        return run_serve(argv[1:])
    if argv and argv[0] in TRUST_COMMANDS:  # verify-audit, device-keygen, page (trust.py)
        return run_trust_command(argv)
    args = build_parser().parse_args(argv)
    if args.list_runtimes:
        for line in list_runtimes_lines():
            emit(line)
        return 0
    try:
        _check_args(args)
        session = open_session(args)  # --trust: the signature is checked before anything opens the model
        t0 = time.perf_counter()
        backend = open_backend(args.model, args.threads, require_contract=True, check_cpu=not args.ignore_cpu_check, runtime=args.runtime)
        load_ms = (time.perf_counter() - t0) * 1000
        clf = Classifier(backend)
        session.attach(clf)
        header = describe(clf) + session.header()
        quiet_stdout = args.json or args.bench
        if quiet_stdout:
            warn(header)  # stdout stays machine-readable
        else:
            emit(header)
        selftest = run_selftest(backend) if (args.selftest or args.bench) else {}
        if args.selftest:
            line = selftest_line(selftest)
            if args.json and not args.bench:
                emit({"selftest": selftest})
            else:
                (warn if quiet_stdout else emit)(line)
            if selftest.get("passed") is False:
                return EXIT_SELFTEST_FAILED
        if args.bench:
            return run_bench(clf, args, load_ms, selftest)
        if not (args.image or args.dir or args.camera is not None):
            return 0
        if args.image:
            return run_image(clf, args, session)
        if args.dir:
            return run_dir(clf, args, session)
        capture, is_file = open_capture(args.camera)
        counts = run_camera(clf, capture, is_file=is_file, every=args.every, max_frames=args.max_frames,
                            max_fps=args.max_fps, top_k=args.top_k, as_json=args.json)
        why = "interrupted" if counts["interrupted"] else "done"
        rate = counts["classified"] / counts["seconds"] if counts["seconds"] > 0 else 0.0
        warn(f"{why}: {counts['read']} frames read, {counts['classified']} classified ({rate:.1f}/s), "
             f"{counts['dropped']} dropped, {counts['bad']} bad")
        return 0
    except (RunnerError, ImageError, ModelLoadError, ContractError, CameraError, DecisionError, TrustError) as exc:
        print(f"edgecxr-runner: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `... | head`: the reader left; stop quietly like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
