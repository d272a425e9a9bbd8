"""ncnn: pnnx from a TorchScript trace of the PyTorch model (not from the ONNX export),
FP32, FP16 (pnnx ``fp16=1``: float16 weights) and INT8 calibrated on the same real
images as the other formats (``convert/formats/ncnn/int8.py``, ncnn's int8 conventions).

Files: ``<arch>_<precision>.ncnn.param`` (the graph, the primary file) with
``<arch>_<precision>.ncnn.bin`` (weights) beside it; the contract is a sidecar,
``<file>.ncnn.param.json``. What the FP16 file computes depends on the CPU: on x86 and
ARMv8.0 cores (Pi 4) ncnn widens its float16 weights to float32 at load (FP32 results
up to weight rounding, half the file); on ARMv8.2 cores with float16 arithmetic (Pi 5)
it stores activations and computes in float16 too.
"""
from __future__ import annotations

import os
import shutil
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from edgecxr.convert.formats.base import PRECISIONS, ExportFormat, Production, Stats
from edgecxr.device.contract import Contract, TensorSpec
from edgecxr.device.formats import DEVICE_FORMATS, read_contract
from edgecxr.errors import EdgecxrError

INSTALL = "pip install pnnx ncnn"
# ncnn INT8 is not bit-identical across correct CPUs: its ARM and AVX2 kernels compute the exact int8
# sums, its AVX-512 VNNI depthwise kernel does not (up to 9 units of the accumulator off on the README
# MobileNetV2's first depthwise layer), which moved golden-image probabilities by up to 0.057 between
# this VNNI host and an emulated Cortex-A72 or Haswell. A broken kernel moves them by about 0.5.
INT8_MAX_PROB_DIFF = 0.1


def _missing() -> str | None:
    for dist in ("pnnx", "ncnn"):
        try:
            version(dist)
        except PackageNotFoundError:
            return f"{dist} is not installed: {INSTALL}"
    return None


def ncnn_contract(base: Contract, param: str, precision: str, source: dict[str, Any], versions: dict[str, str],
                  target: dict[str, Any]) -> Contract:
    """ncnn takes one float32 C x H x W image per extractor and returns float32 logits; blob names from the graph."""
    from edgecxr.convert.formats.ncnn.export import read_param

    graph = read_param(param)
    consumed = {b for la in graph.layers for b in la.bottoms}
    inp = next(la.tops[0] for la in graph.layers if la.type == "Input")
    out = [t for la in graph.layers for t in la.tops if t not in consumed]
    if len(out) != 1:
        raise EdgecxrError(f"the ncnn graph has {len(out)} unconsumed blobs {out}; expected one output")
    tools = {d: version(d) for d in ("pnnx", "ncnn")}
    return base.with_io(format="ncnn", precision=precision,
                        input=TensorSpec(inp, base.model_input_shape(batch=1), "float32", "NCHW"),
                        output=TensorSpec(out[0], (1, base.num_classes), "float32"),
                        source=dict(source), versions={**versions, **tools}, target=dict(target))


def produce(p: Production, steps: dict[str, Any]) -> None:
    from edgecxr.convert.formats.ncnn import export as ncnn_export
    from edgecxr.convert.formats.ncnn import int8 as ncnn_int8

    run, c = p.run, p.contract
    why = _missing()
    if why:
        for step in steps.values():
            run.skip(step, why)
        return
    work = ncnn_export.make_work_dir(run.out_dir)
    shape = c.model_input_shape(batch=1)
    pairs: dict[str, tuple[str, str]] = {}
    try:
        run.echo(f"  ncnn    ...   TorchScript trace + pnnx ({', '.join(steps)})")

        def make(precision: str) -> dict[str, Any]:
            t0 = time.perf_counter()
            details: dict[str, Any] = {}
            if "fp32" not in pairs:
                traced = os.path.join(work, "model.pt")
                ncnn_export.trace(p.torch_model, shape, traced)
                pairs["fp32"] = ncnn_export.run_pnnx(traced, shape, work, fp16=False)
            if precision == "fp16":
                pairs["fp16"] = ncnn_export.run_pnnx(os.path.join(work, "model.pt"), shape, work, fp16=True)
            elif precision == "int8":
                pairs["int8"] = (os.path.join(work, "int8.ncnn.param"), os.path.join(work, "int8.ncnn.bin"))
                details = ncnn_int8.quantize(*pairs["fp32"], p.calib.nchw(c.preprocess), p.calib_method, *pairs["int8"], run.threads)
            param, weights = pairs[precision]
            is_int8 = precision == "int8"
            target = dict(p.plain_target, runtime="ncnn", int8_scheme=details["scheme"]) if is_int8 else p.plain_target
            contract = ncnn_contract(c, param, precision, p.int8_source if is_int8 else p.source, p.versions, target)
            dest = run.path(steps[precision])
            ncnn_export.install(param, weights, dest)
            run.stage(dest, contract)
            return {**details, "pnnx_seconds": round(time.perf_counter() - t0, 2)}

        for precision, step in steps.items():
            if precision != "fp32" and "fp32" not in pairs:
                run.skip(step, "FP32 ncnn export failed")
                continue
            run.do(step, lambda pr=precision: make(pr))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def finish_contract(contract: Contract) -> Contract:
    """INT8 golden vectors get ncnn's cross-CPU tolerance (``INT8_MAX_PROB_DIFF``)."""
    from dataclasses import replace

    tol = (contract.selftest or {}).get("tolerance")
    if contract.precision == "int8" and tol is not None and float(tol.get("max_prob_diff", 0)) < INT8_MAX_PROB_DIFF:
        tol = {**tol, "max_prob_diff": INT8_MAX_PROB_DIFF,
               "why": "ncnn's AVX-512 VNNI int8 depthwise kernel is not exact; ARM and AVX2 are (measured spread 0.057)"}
        contract = replace(contract, selftest={**contract.selftest, "tolerance": tol})
    return contract


def graph_stats(path: str) -> Stats:
    """Weights from the graph; MACs from each weighted layer's output size, found by running it once on zeros."""
    import numpy as np

    from edgecxr.convert.formats.ncnn.export import WEIGHTED, read_param
    from edgecxr.device.runtimes.ncnn_cpu import configure, import_ncnn, weights_path

    graph = read_param(path)
    weighted = [la for la in graph.layers if la.type in WEIGHTED]
    contract = read_contract(path)
    if not weighted or contract is None:
        return {"params": None, "macs": None, "stats_from": "n/a (no weighted layers or no contract sidecar)"}
    ncnn = import_ncnn()
    net = ncnn.Net()
    configure(net.opt, 1, contract.precision)
    net.opt.lightmode = False
    net.load_param(path)
    net.load_model(weights_path(path))
    ex = net.create_extractor()
    ex.input(contract.input.name, ncnn.Mat(np.zeros(contract.input.shape[1:], np.float32)))
    params = macs = 0
    for la in weighted:
        ip = la.type == "InnerProduct"
        n_out, count, bias = la.get(0), la.get(2 if ip else 6), la.get(1 if ip else 5)
        params += count + (n_out if bias else 0)
        _ret, top = ex.extract(la.tops[0])
        macs += int(np.array(top).size) * (count // max(n_out, 1))  # each output value reads count / n_out weights
    return {"params": int(params), "macs": int(macs), "stats_from": "ncnn graph (Convolution/ConvolutionDepthWise/InnerProduct)",
            "weight_precision": contract.precision}


FORMAT = ExportFormat(
    device=DEVICE_FORMATS["ncnn"],
    precisions=PRECISIONS,
    layout="NCHW",
    description="ncnn via pnnx from a TorchScript trace (batch 1); weights in <file>.ncnn.bin, contract in a <file>.ncnn.param.json sidecar",
    options={
        "fp32": "pnnx fp16=0 (float32 weights); run with float16/bfloat16 storage off",
        "fp16": "pnnx fp16=1 (float16 weights; float16 storage/arithmetic where the CPU has it, float32 compute on x86)",
        "int8": "ncnn int8 (s8 x s8): per-channel weight scales, per-layer input scales from the real calibration images (--calib-method), written in Python (ncnn2int8 is not on PyPI)",
    },
    marker="D",
    produce=produce,
    finish_contract=finish_contract,
    graph_stats=graph_stats,
)
