#!/usr/bin/env python3
"""Instructions per inference, counted by valgrind: a speed number CI can trust.

Every latency in the README comes from a shared, noisy machine, so no timed test can
notice that a change made an artifact slower. Counted instructions can (PyTorch's
``benchmarks/instruction_counts`` does the same): each artifact runs under
``valgrind --tool=callgrind`` in a fresh process with one thread and a fixed input;
after N warm inferences callgrind starts counting (``CALLGRIND_TOGGLE_COLLECT`` from a
five-line C helper built with gcc) and stops after M more, so the count is
count(N+M) - count(N) taken in one process, and (that) / M is one warm inference.
Two processes (N, then N+M) do not cancel start-up here: ONNX Runtime's session
set-up alone differed by 21 M instructions between identical runs (1.8% of all),
which left 8.5% between repeats of a per-inference count at M = 8.

Counts depend on the kernels the runtimes pick from CPUID, so a count means nothing
without the instruction set it ran on. Valgrind does not emulate AVX-512 (3.19 shows
a program AVX2, FMA, BMI2, F16C and no AVX-512 or AVX-VNNI even on a Xeon that has
them), so the key of a baseline is the CPUID *as the counted process sees it under
valgrind* (numpy's CPU dispatch probe, run under valgrind), with the valgrind and
runtime versions; the host's own /proc/cpuinfo features are recorded beside it for
the reader. ``--check`` compares only against a baseline with the same key and says
plainly, without failing, when there is none.

Artifacts: by default a fixed-seed MobileNetV2 (64 px) trained for one epoch on
edgecxr's synthetic data and converted by ``edgecxr convert`` (FP32/INT8, ONNX/TFLite),
built once into ``--build``: the set CI can rebuild on a fresh clone and the only one
``--update`` records. Or the model files given (with their contracts), e.g. the README
bench table's files: counted and printed, and checked only where the baseline has their
name and input shape. ``--max-spread`` fails when repeats disagree by more than a
fraction (the counts are only worth a 3% check if they repeat far closer). ``--variant slower`` swaps the FP32
ONNX for the same graph with one extra 3x3 convolution after the stem, to show that
the check fails on a slower artifact.

    python scripts/dev/instruction_counts.py                       # print the table
    python scripts/dev/instruction_counts.py --check               # exit 1 on a rise > 3%
    python scripts/dev/instruction_counts.py --update              # record this key's baseline
    python scripts/dev/instruction_counts.py --repeat 2 --max-spread 0.001   # twice; exit 1 if they differ > 0.1%
    python scripts/dev/instruction_counts.py runs/a/export/m_int8.tflite --repeat 2   # files of your own
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BASELINE = os.path.join(HERE, "instruction_baseline.json")
BUILD = os.path.join(ROOT, "build", "instruction_counts")
RECIPE = "mobilenet_v2 64px, synthetic data 3x20 seed 0, train 1 epoch seed 0, convert --int8 --formats onnx,tflite"
NAMES = ("mobilenet_v2_fp32.onnx", "mobilenet_v2_int8.onnx", "mobilenet_v2_fp32.tflite", "mobilenet_v2_int8.tflite")
TOLERANCE = 0.03
ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}


# --- the counted process -------------------------------------------------------------------------

def harness(model: str, warm: int, runs: int) -> None:
    """Open ``model`` with one thread, prepare a fixed input, invoke it ``warm`` times uncounted, then ``runs`` times counted."""
    import numpy as np

    from edgecxr.device.backends import open_backend

    backend = open_backend(model, 1, require_contract=True, check_cpu=False)
    x = np.random.default_rng(0).standard_normal(backend.contract.model_input_shape()).astype(np.float32)
    prepared = backend.prepare(x)
    for _ in range(warm):
        backend.invoke(prepared)
    toggle = _toggle()
    toggle()  # callgrind starts counting here ...
    for _ in range(runs):
        backend.invoke(prepared)
    toggle()  # ... and stops here


def _toggle():
    """CALLGRIND_TOGGLE_COLLECT from the small C helper (a client request is an instruction
    sequence Python cannot issue itself); a no-op outside valgrind."""
    import ctypes

    lib = os.environ.get("EDGECXR_CALLGRIND_HELPER")
    return ctypes.CDLL(lib).edgecxr_callgrind_toggle if lib else (lambda: None)


HELPER_C = """#include <valgrind/callgrind.h>
void edgecxr_callgrind_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
"""


def build_helper(folder: str) -> str:
    """Compile the toggle helper (needs gcc and valgrind's own callgrind.h, both in Debian's valgrind/gcc)."""
    so = os.path.join(folder, "callgrind_toggle.so")
    src = os.path.join(folder, "callgrind_toggle.c")
    with open(src, "w", encoding="utf-8") as fh:
        fh.write(HELPER_C)
    proc = subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", so, src], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cannot build the callgrind helper: {proc.stderr.strip()[:200]}")
    return so


def _valgrind(argv: list[str], workdir: str) -> int:
    """Instructions ``argv`` executes while its harness has callgrind collecting (the counted inferences)."""
    out = os.path.join(workdir, f"cg.{time.monotonic_ns()}.out")
    env = {**os.environ, **ENV, "EDGECXR_CALLGRIND_HELPER": build_helper(workdir)}
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--collect-atstart=no", f"--callgrind-out-file={out}", *argv],
                          capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0 or not os.path.exists(out):
        raise RuntimeError(f"valgrind {' '.join(argv[-3:])} exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    with open(out, encoding="utf-8", errors="replace") as fh:
        m = re.search(r"^(?:summary|totals):\s+(\d+)", fh.read(), re.M)
    os.unlink(out)
    if not m or not int(m.group(1)):
        raise RuntimeError(f"callgrind counted nothing for {argv[-3]}")
    return int(m.group(1))


def per_inference(model: str, n: int, m: int, workdir: str) -> dict[str, Any]:
    """Instructions of inferences N+1 .. N+M, divided by M: count(N+M) - count(N) read from one process
    (callgrind collects only between the harness's two toggles), so no start-up enters it."""
    total = _valgrind([sys.executable, os.path.abspath(__file__), "--harness", model, str(n), str(m)], workdir)
    return {"instructions": total / m, "counted": total, "n": n, "m": m}


# --- which CPU the counts belong to ---------------------------------------------------------------

def features_under_valgrind(workdir: str) -> list[str]:
    """The CPU features numpy's dispatcher finds when run under valgrind: what the runtimes see."""
    code = ("import json\ntry:\n from numpy._core._multiarray_umath import __cpu_features__ as f\nexcept ImportError:\n"
            " from numpy.core._multiarray_umath import __cpu_features__ as f\nprint(json.dumps(sorted(k for k, v in f.items() if v)))")
    proc = subprocess.run(["valgrind", "-q", "--tool=none", sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **ENV}, timeout=300, cwd=workdir)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "missing"


def cpu_key(workdir: str) -> dict[str, Any]:
    """What a baseline must share with this machine for its counts to be comparable."""
    vg = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    return {"machine": platform.machine(), "valgrind": vg, "cpuid_under_valgrind": features_under_valgrind(workdir),
            "python": ".".join(platform.python_version_tuple()[:2]),
            "runtimes": {d: _version(d) for d in ("numpy", "ai-edge-litert", "onnxruntime")}}


def host_cpu() -> dict[str, Any]:
    """The host CPU (for the reader: not part of the key, valgrind hides most of its features)."""
    from edgecxr.device.cpufeatures import cpu_description

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = set(re.search(r"^flags\s*:(.*)$", fh.read(), re.M).group(1).split())
    except (OSError, AttributeError):
        flags = set()
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    return {"model": cpu_description()["model"], "int_features": [f for f in wanted if f in flags]}


# --- artifacts -----------------------------------------------------------------------------------

def build_artifacts(build: str) -> list[str]:
    """The fixed-seed MobileNetV2 files (built once; the recipe string marks a finished build)."""
    export = os.path.join(build, "export")
    stamp = os.path.join(build, "recipe.txt")
    paths = [os.path.join(export, n) for n in NAMES]
    if os.path.exists(stamp) and open(stamp, encoding="utf-8").read() == RECIPE and all(map(os.path.exists, paths)):
        return paths
    from edgecxr.data.synthetic import write_dataset

    shutil.rmtree(build, ignore_errors=True)
    data = write_dataset(os.path.join(build, "data"), n_per_class=20, size=64, seed=0)
    edgecxr = [sys.executable, "-m", "edgecxr"]
    run = os.path.join(build, "run")
    for argv in ([*edgecxr, "train", "--data", data, "--arch", "mobilenet_v2", "--out", run, "--epochs", "1", "--img-size", "64",
                  "--batch-size", "16", "--seed", "0", "--quiet"],
                 [*edgecxr, "convert", os.path.join(run, "best.pt"), "--out", export, "--int8", "--formats", "onnx,tflite",
                  "--calib-n", "30", "--keep-degraded", "--quiet"]):
        print(f"instruction_counts: {' '.join(argv[2:5])} ...", file=sys.stderr)
        proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **ENV})
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[2:4])} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    with open(stamp, "w", encoding="utf-8") as fh:
        fh.write(RECIPE)
    return paths


def make_slower_onnx(src: str, dst: str) -> str:
    """``src`` with one extra 3x3 convolution (same channels, fixed-seed weights) after its first Conv."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(src)
    g = model.graph
    first = next(n for n in g.node if n.op_type == "Conv")
    weight = next(i for i in g.initializer if i.name == first.input[1])
    ch = int(numpy_helper.to_array(weight).shape[0])
    w = (np.random.default_rng(0).standard_normal((ch, ch, 3, 3)) * 0.01).astype(np.float32)
    g.initializer.extend([numpy_helper.from_array(w, "slower_extra_w")])
    out = first.output[0]
    first.output[0] = out + "_before_extra"
    extra = helper.make_node("Conv", [out + "_before_extra", "slower_extra_w"], [out], pads=[1, 1, 1, 1], name="slower_extra_conv")
    g.node.insert(list(g.node).index(first) + 1, extra)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    onnx.save(model, dst)
    return dst


def artifact_id(path: str) -> str:
    """How a count is filed: the file name and the model input's shape (a 224 px file is not a 64 px one)."""
    from edgecxr.device.backends import open_backend

    shape = open_backend(path, 1, require_contract=True, check_cpu=False).contract.model_input_shape()
    return f"{os.path.basename(path)} {'x'.join(str(d) for d in shape)}"


# --- counting, baseline and check ----------------------------------------------------------------

def count_all(paths: list[str], n: int, m: int, repeat: int, workdir: str) -> dict[str, Any]:
    """Per artifact id: the mean count over ``repeat`` measurements, each repeat, and their spread."""
    out: dict[str, Any] = {}
    for path in paths:
        reps = [per_inference(path, n, m, workdir) for _ in range(repeat)]
        vals = [r["instructions"] for r in reps]
        mean = sum(vals) / len(vals)
        out[artifact_id(path)] = {"instructions": round(mean), "repeats": [round(v) for v in vals],
                                  "spread": (max(vals) - min(vals)) / mean if mean else 0.0, "path": path}
        print(f"instruction_counts: {os.path.basename(path)}: {mean / 1e6:.3f} M instructions per inference", file=sys.stderr)
    return out


def load_baseline(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {"schema": "edgecxr.instruction_counts/1", "tolerance": TOLERANCE, "profiles": []}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def matching_profile(baseline: dict[str, Any], key: dict[str, Any]) -> dict[str, Any] | None:
    return next((p for p in baseline["profiles"] if p["key"] == key), None)


def key_difference(baseline: dict[str, Any], key: dict[str, Any]) -> str:
    """Why no profile matches: the fields of the nearest one that differ from this machine's."""
    if not baseline["profiles"]:
        return "the baseline file has no profile yet"
    nearest = min(baseline["profiles"], key=lambda p: sum(p["key"].get(k) != v for k, v in key.items()))
    diffs = [f"{k}: baseline {nearest['key'].get(k)!r}, here {v!r}" for k, v in key.items() if nearest["key"].get(k) != v]
    return "; ".join(diffs)


def compare(counts: dict[str, Any], profile: dict[str, Any], tolerance: float) -> tuple[list[str], bool]:
    """Table lines against the baseline and whether any artifact rose by more than ``tolerance``."""
    lines, failed = [], False
    for aid, c in counts.items():
        base = profile["artifacts"].get(aid, {}).get("instructions")
        if base is None:
            lines.append(f"| {aid} | {c['instructions'] / 1e6:.3f} | n/a | n/a | not in the baseline |")
            continue
        change = c["instructions"] / base - 1
        verdict = "FAIL: rose more than the tolerance" if change > tolerance else "ok" if change > -tolerance else "ok (faster: update the baseline)"
        failed |= change > tolerance
        lines.append(f"| {aid} | {c['instructions'] / 1e6:.3f} | {base / 1e6:.3f} | {change:+.2%} | {verdict} |")
    return lines, failed


def table(counts: dict[str, Any]) -> list[str]:
    lines = ["| artifact (input shape) | M instructions / inference | repeats (M) | spread |", "|---|---:|---|---:|"]
    for aid, c in counts.items():
        reps = ", ".join(f"{v / 1e6:.4f}" for v in c["repeats"])
        lines.append(f"| {aid} | {c['instructions'] / 1e6:.3f} | {reps} | {c['spread']:.4%} |")
    return lines


def spread_check(counts: dict[str, Any], limit: float) -> int:
    """0 when every artifact's repeats lie within ``limit`` (a fraction of their mean), else 1; says which."""
    worst = max(counts.items(), key=lambda kv: kv[1]["spread"])
    too_far = [aid for aid, c in counts.items() if c["spread"] > limit]
    verdict = f"FAIL: {', '.join(too_far)} above it" if too_far else "PASS"
    print(f"repeat spread: largest {worst[1]['spread']:.4%} ({worst[0]}, {len(worst[1]['repeats'])} repeats), "
          f"limit {limit:.2%}: {verdict}")
    return 1 if too_far else 0


def update_baseline(path: str, baseline: dict[str, Any], key: dict[str, Any], counts: dict[str, Any], args: argparse.Namespace) -> None:
    profile = {"key": key, "measured_on": host_cpu(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "n": args.n, "m": args.m, "artifacts_from": RECIPE,
               "artifacts": {aid: {k: c[k] for k in ("instructions", "repeats", "spread")} for aid, c in counts.items()}}
    baseline["profiles"] = [p for p in baseline["profiles"] if p["key"] != key] + [profile]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(baseline, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    print(f"instruction_counts: baseline for this key written to {path}", file=sys.stderr)


def check(baseline: dict[str, Any], key: dict[str, Any], counts: dict[str, Any]) -> int:
    """0: within tolerance, or no baseline for this CPU/toolchain (said plainly); 1: a rise over it."""
    tol = baseline.get("tolerance", TOLERANCE)
    profile = matching_profile(baseline, key)
    if profile is None:
        print(f"NO BASELINE for this CPU/toolchain, nothing checked ({key_difference(baseline, key)}). "
              "Counts depend on the instruction set valgrind exposes and on the runtime versions; "
              "record one with --update on such a machine.")
        return 0
    lines, failed = compare(counts, profile, tol)
    print("| artifact (input shape) | M instr now | M instr baseline | change | verdict |\n|---|---:|---:|---:|---|")
    print("\n".join(lines))
    compared = sum(aid in profile["artifacts"] for aid in counts)
    print(f"{'FAIL' if failed else 'PASS'}: instruction counts against the baseline of {profile['created']} "
          f"({compared} of {len(counts)} artifacts in it; tolerance +{tol:.0%}; CPUID under valgrind: {' '.join(key['cpuid_under_valgrind'][-4:])}...)")
    return 1 if failed else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[-6:]))
    p.add_argument("models", nargs="*", help="model files to count (default: the fixed-seed set built into --build)")
    p.add_argument("--build", default=BUILD, help=f"where the fixed-seed artifacts are built (default {os.path.relpath(BUILD, ROOT)})")
    p.add_argument("--baseline", default=BASELINE, help="baseline JSON (default: the committed one)")
    p.add_argument("--n", type=int, default=2, help="inferences of the shorter run (default 2)")
    p.add_argument("--m", type=int, default=8, help="extra inferences of the longer run (default 8)")
    p.add_argument("--repeat", type=int, default=1, help="measure each artifact this many times (default 1)")
    p.add_argument("--check", action="store_true", help="compare with the baseline for this key; exit 1 on a rise over its tolerance")
    p.add_argument("--update", action="store_true", help="write these counts as the baseline for this key")
    p.add_argument("--variant", choices=["slower"], help="slower: count the FP32 ONNX with an extra conv under its own name")
    p.add_argument("--max-spread", type=float, metavar="FRACTION",
                   help="exit 1 if any artifact's repeats differ by more than this fraction of their mean (e.g. 0.001; needs --repeat >= 2)")
    p.add_argument("--only", help="count only the artifacts whose file name contains this text (e.g. fp32.onnx)")
    p.add_argument("--json", help="also write the counts and the key here")
    p.add_argument("--harness", nargs=3, metavar=("MODEL", "WARM", "RUNS"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.n < 1 or a.m < 1 or a.repeat < 1:
        p.error("--n, --m and --repeat must be at least 1")
    if a.update and (a.only or a.variant or a.models):
        p.error("--update records the whole fixed-seed artifact set that CI rebuilds: not with --only, --variant or model files")
    missing = [m for m in a.models if not os.path.isfile(m)]
    if missing:
        p.error(f"no such model file: {missing[0]}")
    if a.max_spread is not None and (a.repeat < 2 or not 0 < a.max_spread < 1):
        p.error("--max-spread needs --repeat 2 or more and a fraction between 0 and 1 (0.001 is 0.1%)")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.harness:
        harness(a.harness[0], int(a.harness[1]), int(a.harness[2]))
        return 0
    if shutil.which("valgrind") is None:
        print("instruction_counts: valgrind is not installed (apt-get install valgrind): nothing counted, check SKIPPED")
        return 0
    paths = [os.path.abspath(m) for m in a.models] or build_artifacts(a.build)
    if a.variant == "slower":
        fp32 = next(p for p in paths if p.endswith("_fp32.onnx"))
        paths[paths.index(fp32)] = make_slower_onnx(fp32, os.path.join(a.build, "slower", os.path.basename(fp32)))
    paths = [p for p in paths if not a.only or a.only in os.path.basename(p)]
    with tempfile.TemporaryDirectory(prefix="instruction-counts-") as workdir:
        try:
            key = cpu_key(workdir)
            counts = count_all(paths, a.n, a.m, a.repeat, workdir)
        except RuntimeError as exc:
            print(f"instruction_counts: error: {exc}", file=sys.stderr)
            return 2
    print("\n".join(table(counts)))
    print(f"CPUID under valgrind: {' '.join(key['cpuid_under_valgrind'])}; host: {host_cpu()}; {key['valgrind']}")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump({"key": key, "host": host_cpu(), "counts": counts, "variant": a.variant}, fh, indent=1)
    baseline = load_baseline(a.baseline)
    if a.update:
        update_baseline(a.baseline, baseline, key, counts, a)
    rc = check(baseline, key, counts) if a.check else 0
    return max(rc, spread_check(counts, a.max_spread)) if a.max_spread is not None else rc


if __name__ == "__main__":
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    sys.exit(main())
