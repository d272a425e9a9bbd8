#!/usr/bin/env python3
"""Per-node time of an FP32 and an INT8 ONNX model side by side (ONNX Runtime's profiler).

    .venv/bin/python scripts/dev/ort_node_profile.py FP32.onnx INT8.onnx [--runs 200] [--threads 1] [--top 12]

Shows where INT8 pays off and where it does not: on x86, ORT's u8s8 convolution is
slower than its FP32 one for a 3-channel stem and for the first full-resolution
depthwise layer of MobileNetV2. Those node names are candidates for
``edgecxr convert --int8 --keep-float NODE,...`` when latency matters more than a
few kilobytes. Both models run in this one process, alternately, on the same input.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile

import numpy as np


def profile(path: str, x: np.ndarray, runs: int, threads: int, prefix: str) -> dict[str, float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = prefix
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(runs):
        sess.run(None, feed)
    with open(sess.end_profiling(), encoding="utf-8") as fh:
        events = json.load(fh)
    per_node: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[e["name"][: -len("_kernel_time")]] += e["dur"] / 1000.0 / runs
    return dict(per_node)


def node_namer(fp32_path: str):
    """ORT names fused nodes by their output tensor (FP32: ``<tensor>_nchwc``) or by
    the source node plus a suffix (INT8: ``<node>_token_7``); map both back to the
    ONNX convolution (or other node) they compute, so the two models line up."""
    import onnx

    graph = onnx.load(fp32_path, load_external_data=False).graph
    producer = {out: n for n in graph.node for out in n.output}

    def name(raw: str) -> str:
        raw = re.sub(r"_token_\d+$", "", raw)
        tensor = re.sub(r"_nchwc$", "", raw)
        node = producer.get(tensor)
        if node is None:
            return raw
        while node.op_type in ("Clip", "Relu", "BatchNormalization") and node.input and node.input[0] in producer:
            node = producer[node.input[0]]  # activations and batch norm are fused into their convolution
        return node.name

    return name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fp32")
    ap.add_argument("int8")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    for p in (args.fp32, args.int8):
        if not os.path.exists(p):
            sys.exit(f"{p}: not found")
    import onnxruntime as ort

    shape = [d if isinstance(d, int) else 1 for d in ort.InferenceSession(args.fp32, providers=["CPUExecutionProvider"]).get_inputs()[0].shape]
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        f = profile(args.fp32, x, args.runs, args.threads, os.path.join(tmp, "fp32"))
        q = profile(args.int8, x, args.runs, args.threads, os.path.join(tmp, "int8"))
    name = node_namer(args.fp32)
    fp32_by_node: dict[str, float] = collections.defaultdict(float)
    for k, v in f.items():
        fp32_by_node[name(k)] += v
    int8_by_node: dict[str, float] = collections.defaultdict(float)
    for k, v in q.items():
        int8_by_node[name(k)] += v
    print(f"total per run: FP32 {sum(f.values()):.3f} ms, INT8 {sum(q.values()):.3f} ms ({args.runs} runs, {args.threads} thread(s), kernel time only)")
    rows = [(n, fp32_by_node.get(n), t) for n, t in int8_by_node.items()]
    rows.sort(key=lambda r: -(r[2] - (r[1] or 0.0)))
    print(f"\n{'INT8 ms':>8} {'FP32 ms':>8} {'INT8/FP32':>9}  node (slowest INT8 relative to FP32 first)")
    for n, ft, qt in rows[: args.top]:
        ratio = f"{qt / ft:9.2f}" if ft else f"{'-':>9}"
        print(f"{qt:8.3f} {ft if ft is not None else float('nan'):8.3f} {ratio}  {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
