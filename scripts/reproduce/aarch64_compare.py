#!/usr/bin/env python3
"""Compare the runner's --json output on x86 and on emulated aarch64 (used by aarch64_check.sh).

usage: aarch64_compare.py MODEL X86.jsonl X86.err ARM.jsonl ARM.err

Pass rule: same files, same labels; FP32/FP16 probabilities within 1e-4; INT8
TFLite probabilities identical when both sides report the same runtime version
(integer kernels are deterministic, so any difference is a real bug, e.g. qemu's
default CPU model gave wrong INT8 results); INT8 ONNX within 1e-4, since ONNX
Runtime's ARM and x86 kernels requantize with different (exact) arithmetic.
Prints one line; exit 1 on a mismatch.
"""
from __future__ import annotations

import json
import re
import sys

FLOAT_TOL = 1e-4
# ncnn INT8: ARM and AVX2 kernels compute exact int8 sums, ncnn's AVX-512 VNNI depthwise kernel
# does not (up to 9 units of the accumulator off, measured): the x86 side may be the one that moves.
NCNN_INT8_TOL = 0.1


def _rows(path: str) -> dict[str, dict]:
    with open(path, encoding="utf-8") as fh:
        return {r["file"]: r for r in (json.loads(line) for line in fh if line.startswith("{"))}


def _runtime(err_path: str) -> str:
    with open(err_path, encoding="utf-8") as fh:
        m = re.search(r"runtime (.+)$", fh.read(), re.M)
    return m.group(1).strip() if m else "?"


def _precision(err_path: str) -> str:
    """From the runner's header line: 'model NAME: ARCH FORMAT PRECISION, ...'."""
    with open(err_path, encoding="utf-8") as fh:
        m = re.search(r"model \S+: \S+ (\S+) (\S+),", fh.read())
    return m.group(2) if m else "fp32"


def main(argv: list[str]) -> int:
    model, x86_json, x86_err, arm_json, arm_err = argv
    precision = _precision(x86_err)
    a, b = _rows(x86_json), _rows(arm_json)
    rt_a, rt_b = _runtime(x86_err), _runtime(arm_err)
    name = model.rsplit("/", 1)[-1]
    if not a or set(a) != set(b):
        print(f"FAIL {name}: x86 classified {len(a)} files, aarch64 {len(b)}; the file lists differ")
        return 1
    diff = max(abs(a[f]["probabilities"][c] - b[f]["probabilities"][c]) for f in a for c in a[f]["probabilities"])
    labels = sum(a[f]["label"] == b[f]["label"] for f in a)
    exact = precision == "int8" and rt_a == rt_b and not model.endswith((".onnx", ".ncnn.param"))
    tol = NCNN_INT8_TOL if precision == "int8" and model.endswith(".ncnn.param") else FLOAT_TOL
    ok = labels == len(a) and (diff == 0.0 if exact else diff <= tol)
    rule = "identical" if exact else f"<= {tol:g}"
    print(f"{'PASS' if ok else 'FAIL'} {name} ({precision}): {len(a)} images, max |p_x86 - p_arm| = {diff:.3g} "
          f"(required {rule}), labels agree {labels}/{len(a)}; x86 {rt_a}, aarch64 {rt_b}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
