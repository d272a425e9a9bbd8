#!/usr/bin/env python3
"""Which INT8 scheme is correct and fast on which CPU: the table behind ``convert --target``.

For one checkpoint, quantizes its FP32 ONNX export with every ONNX Runtime scheme
considered (u8 x s8 full range, s8 x s8, u8 x s8 with 7-bit weights, u8 x u8), runs
each with the TFLite INT8 file on the checkpoint's test split, and reports top-1
agreement and the macro-F1 change against PyTorch FP32 natively and under
``qemu-x86_64-static -cpu Haswell`` (AVX2, no VNNI: correctness only), plus native
latency against the FP32 file of the same format (1 thread, interleaved rounds in
one process so machine load hits every model alike).

    python scripts/reproduce/int8_schemes.py --ckpt runs/mobilenet_v2_qat/best.pt --export runs/mobilenet_v2_qat/export \\
        --out runs/int8_schemes [--haswell-images 300]

Prints a Markdown table and writes int8_schemes.json. The CPU and its integer
features are named in both.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

SCHEMES = [  # name, activations, weights, reduce_range
    ("u8s8 full range (--target x86-vnni/arm64)", "uint8", "int8", False),
    ("s8s8 full range", "int8", "int8", False),
    ("u8s8 7-bit weights (reduce_range)", "uint8", "int8", True),
    ("u8u8 (--target portable, default)", "uint8", "uint8", False),
]


def child(paths: list[str], x_path: str, out_dir: str) -> None:
    """Logits of every model on the saved inputs, 1 thread; runs natively or under qemu."""
    from edgecxr.device.backends import open_backend
    from edgecxr.device.cpufeatures import cpu_description

    x = np.load(x_path)
    for i, p in enumerate(paths):
        b = open_backend(p, threads=1, check_cpu=False)
        np.save(os.path.join(out_dir, f"logits_{i}.npy"), np.concatenate([b.predict(x[j:j + 16]) for j in range(0, len(x), 16)]))
    print(json.dumps(cpu_description()))


def run_child(paths: list[str], x: np.ndarray, work: str, emulate: bool, reuse: bool = False) -> tuple[list[np.ndarray], dict]:
    os.makedirs(work, exist_ok=True)
    saved = [os.path.join(work, f"logits_{i}.npy") for i in range(len(paths))]
    cpu_file = os.path.join(work, "cpu.json")
    if reuse and all(os.path.exists(p) for p in saved + [cpu_file]):
        with open(cpu_file, encoding="utf-8") as fh:
            return [np.load(p) for p in saved], json.load(fh)
    np.save(os.path.join(work, "x.npy"), x)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", os.path.join(work, "x.npy"), work, *paths]
    if emulate:
        cmd = [shutil.which("qemu-x86_64-static"), "-cpu", "Haswell", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child failed: {proc.stderr[-800:]}")
    cpu = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(cpu_file, "w", encoding="utf-8") as fh:
        json.dump(cpu, fh)
    return [np.load(p) for p in saved], cpu


def latency(paths: list[str], x1: np.ndarray, rounds: int, runs: int) -> list[float]:
    from edgecxr.device.backends import open_backend

    backends = [open_backend(p, threads=1, check_cpu=False) for p in paths]
    prepared = [b.prepare(x1) for b in backends]
    times: list[list[float]] = [[] for _ in paths]
    for b, p in zip(backends, prepared):
        for _ in range(5):
            b.invoke(p)
    for _ in range(rounds):
        for i, (b, p) in enumerate(zip(backends, prepared)):
            for _ in range(runs):
                t = time.perf_counter_ns()
                b.invoke(p)
                times[i].append((time.perf_counter_ns() - t) / 1e6)
    return [float(np.median(t)) for t in times]


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--export", required=True, help="convert's output folder (FP32 ONNX, FP32/INT8 TFLite)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--calib-n", type=int, default=300)
    ap.add_argument("--haswell-images", type=int, default=300, help="test images run under emulation (0: skip)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--reuse", action="store_true", help="reuse the logits saved in OUT by an earlier run of the same files")
    ap.add_argument("--keep-float", default="", help="ONNX nodes kept float in every scheme (as convert --keep-float)")
    return ap.parse_args()


def _scheme_files(a: argparse.Namespace, contract: object, fp32_onnx: str) -> tuple[list[str], list[str], bool, tuple[str, str]]:
    """One INT8 ONNX file per scheme (made once), then convert's INT8 TFLite where it exists."""
    from edgecxr.convert import calibration
    from edgecxr.convert.formats.onnx.export import INPUT_NAME
    from edgecxr.convert.formats.onnx.quantize import quantize_int8

    calib = calibration.load_calibration(contract, None, a.calib_n, progress=False).nchw(contract.preprocess)
    names, paths = [], []
    for i, (name, act, w, rr) in enumerate(SCHEMES):
        dest = os.path.join(a.out, f"scheme_{i}.onnx")
        if not os.path.exists(dest):
            keep = [k for k in a.keep_float.split(",") if k]
            quantize_int8(fp32_onnx, dest, calib, "minmax", keep, INPUT_NAME, reduce_range=rr, activations=act, weights=w)
        names.append("ONNX INT8 " + name)
        paths.append(dest)
    tfl = tuple(os.path.join(a.export, f"{contract.arch}_{p}.tflite") for p in ("fp32", "int8"))
    has_tflite = all(os.path.exists(p) for p in tfl)
    if has_tflite:
        names.append("TFLite INT8 (s8 x s8, XNNPACK)")
        paths.append(tfl[1])
    return names, paths, has_tflite, tfl


def _cell(j: dict | None) -> str:
    if not j:
        return "n/a"
    lo, hi = j["delta_macro_f1_ci95"]
    return f"{100 * j['top1_agreement']:.1f}% / {j['delta_macro_f1_pp']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _print_table(rows: list[dict], cpu: dict, emu_cpu: dict | None, lat: list[float], has_tflite: bool, n_test: int) -> None:
    from edgecxr.device.cpufeatures import features_string

    print(f"Native CPU: {cpu['model']}, {features_string(cpu)}"
          + (f"; emulated: qemu -cpu Haswell, seen as {features_string(emu_cpu)}" if emu_cpu else ""))
    print(f"FP32 median, 1 thread: ONNX Runtime {lat[0]:.2f} ms" + (f", TFLite {lat[-2]:.2f} ms" if has_tflite else "") + "\n")
    n_emu = rows[0].get("haswell", {}).get("images", 0)
    print(f"| INT8 scheme | native, {n_test} test images: top-1 agree / dF1 pp [95% CI] | native, first {n_emu} | "
          f"qemu Haswell (AVX2), same {n_emu}: top-1 agree / dF1 pp | max abs logit diff Haswell vs native | native median ms (x FP32) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        diff = r.get("haswell_vs_native_max_abs_logit_diff")
        print(f"| {r['scheme']} | {_cell(r['native'])} | {_cell(r.get('native_subset'))} | {_cell(r.get('haswell'))} | "
              f"{'n/a' if diff is None else f'{diff:.4f}'} | {r['median_ms']:.2f} ({r['vs_fp32']:.2f}x) |")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[4:], sys.argv[2], sys.argv[3])
        return 0
    a = _args()
    from edgecxr.convert import verify
    from edgecxr.device.decision import softmax
    from edgecxr.eval.metrics import compare_to_reference
    from edgecxr.models.factory import load_model

    os.makedirs(a.out, exist_ok=True)
    model, contract = load_model(a.ckpt)
    vset = verify.load_verify_set(contract, None, progress=False)
    ref = verify.torch_logits(model, vset.x)
    fp32_onnx = os.path.join(a.export, f"{contract.arch}_fp32.onnx")
    names, paths, has_tflite, (tfl32, _) = _scheme_files(a, contract, fp32_onnx)

    def judge(logits: np.ndarray, n: int) -> dict:
        p_ref, p = softmax(ref[:n].astype(np.float64)), softmax(logits.astype(np.float64))
        return {"images": n, **compare_to_reference(vset.y[:n], p_ref, p, len(vset.classes), n_boot=1000)}

    native, cpu = run_child(paths, vset.x, os.path.join(a.out, "native"), emulate=False, reuse=a.reuse)
    rows = [{"scheme": n, "native": judge(lg, len(vset.y))} for n, lg in zip(names, native)]
    emu_cpu = None
    if a.haswell_images and shutil.which("qemu-x86_64-static"):
        n = min(a.haswell_images, len(vset.y))
        emulated, emu_cpu = run_child(paths, vset.x[:n], os.path.join(a.out, "haswell"), emulate=True, reuse=a.reuse)
        for r, lg, nat in zip(rows, emulated, native):
            # the same images natively, and how far the emulated AVX2 CPU's logits are from this CPU's
            r["native_subset"], r["haswell"] = judge(nat[:n], n), judge(lg, n)
            r["haswell_vs_native_max_abs_logit_diff"] = float(np.abs(lg - nat[:n]).max())
    lat = latency([fp32_onnx, *paths[:len(SCHEMES)], *([tfl32, paths[-1]] if has_tflite else [])], vset.x[:1], a.rounds, a.runs)
    for i, r in enumerate(rows[:len(SCHEMES)]):
        r["median_ms"], r["vs_fp32"] = lat[1 + i], lat[1 + i] / lat[0]
    if has_tflite:
        rows[-1]["median_ms"], rows[-1]["vs_fp32"] = lat[-1], lat[-1] / lat[-2]
    doc = {"checkpoint": os.path.abspath(a.ckpt), "cpu": cpu, "emulated_cpu": emu_cpu,
           "fp32_ms": {"onnx": lat[0], **({"tflite": lat[-2]} if has_tflite else {})}, "rows": rows}
    with open(os.path.join(a.out, "int8_schemes.json"), "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
    _print_table(rows, cpu, emu_cpu, lat, has_tflite, len(vset.y))
    return 0


if __name__ == "__main__":
    sys.exit(main())
