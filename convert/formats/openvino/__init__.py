"""OpenVINO IR: ``<arch>_<precision>.xml`` with its weights in ``<arch>_<precision>.bin``.

Made from the FP32 ONNX export (``openvino.convert_model``), so every format starts
from the same graph: FP32 as converted; FP16 by ``compress_to_fp16`` (float16
weights, f32 compute, see ``device/runtimes/openvino_cpu.py``); INT8 by NNCF post-training
quantization on the same real calibration images the other formats use (refused
without them, like every INT8 file). The batch stays dynamic, as in the ONNX file
(measured: no latency difference against a fixed batch of 1 for MobileNetV2).

The contract lives inside the IR, in ``rt_info["edgecxr_contract"]`` (written by
OpenVINO into the ``.xml``; a 400 KB JSON with quotes, ``<>&`` and newlines
round-trips byte for byte). It is read back without a runtime by parsing the XML.

Formats need packages the core install may lack: the pipeline skips a format whose
runtime module (``device/runtimes/``, ``Runtime.module``) or ``ExportFormat.requires``
module is not importable, reporting one line with the pip command
(``convert/formats/availability.py``). Here: ``openvino`` always, ``nncf`` for INT8.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any

from edgecxr.convert.formats.base import PRECISIONS, ExportFormat, Production, Requirement, Stats, prod, weight_precision
from edgecxr.device.contract import Contract, TensorSpec
from edgecxr.device.formats import DEVICE_FORMATS

INPUT_NAME, OUTPUT_NAME = "input", "logits"  # the ONNX export's names, kept by convert_model
NNCF_PRESET = "performance"  # symmetric weights and activations: what the CPU plugin runs fastest
INT8_SCHEME = "NNCF PTQ: per-channel symmetric s8 weights, per-tensor 8-bit activations, first-layer overflow fix"


def produce(p: Production, steps: dict[str, Any]) -> None:
    run = p.run
    for precision, step in steps.items():
        if p.fp32_onnx is None:
            run.skip(step, "FP32 ONNX export failed")
        else:
            run.do(step, lambda pr=precision, s=step: _make(p, pr, run.path(s)))


def _make(p: Production, precision: str, dest: str) -> dict[str, Any]:
    import openvino as ov

    from edgecxr.versions import tool_versions

    model = ov.convert_model(p.fp32_onnx)
    if model.has_rt_info("framework"):  # the ONNX file's metadata: its contract says format onnx
        del model.get_rt_info()["framework"]
    details: dict[str, Any] = {"from": os.path.basename(p.fp32_onnx)}
    if precision == "int8":
        model = _quantize(model, p.calib.nchw(p.contract.preprocess))
        details["calibration_images"] = len(p.calib)
    versions = {**p.versions, **tool_versions(("openvino", "nncf") if precision == "int8" else ("openvino",))}
    source = p.int8_source if precision == "int8" else p.source
    target = _int8_target(p.plain_target) if precision == "int8" else p.plain_target
    from edgecxr.device.runtimes.openvino_cpu import save_ir

    save_ir(model, None, dest, compress_to_fp16=precision == "fp16")
    p.run.stage(dest, ir_contract(p.contract, precision, source, versions, target))
    return details


def _quantize(model: Any, x: Any) -> Any:
    """NNCF post-training quantization on every calibration image (one per sample, as at inference).

    NNCF draws rich progress bars on stdout whatever the caller asked for; they are
    captured (the step's own line reports its time). Its log warnings still show: its
    logger keeps the stdout stream it was created with.
    """
    import contextlib
    import io
    import logging

    import nncf

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its per-step INFO lines
    dataset = nncf.Dataset([x[i : i + 1] for i in range(len(x))])
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.quantize(model, dataset, preset=nncf.QuantizationPreset(NNCF_PRESET), subset_size=len(x))


def _int8_target(plain: dict[str, Any]) -> dict[str, Any]:
    """No CPU is refused: OpenVINO INT8 is not wrong without VNNI (NNCF halves the first
    layer's weight range against vpmaddubsw saturation), but its kernels differ by CPU,
    so it is not bit-reproducible. Measured on the README's QAT MobileNetV2, against the
    file's outputs on an AVX-512 VNNI host: emulated Haswell (AVX2) labels agree on 30/30
    test images (max |dp| 0.055) but the golden self-test sees |dp| 0.13 > 0.05 and fails;
    emulated Cortex-A76 |dp| 0.10 (fails); emulated Cortex-A72 cannot run it at all (the
    backend reports the CPU plugin's error). The self-test on the target says which."""
    return {**plain, "name": "cpu-dependent", "runtime": "openvino", "int8_scheme": INT8_SCHEME,
            "why": "OpenVINO INT8 kernels differ by CPU: labels agree, probabilities may not; run --selftest on the target"}


def ir_contract(base: Contract, precision: str, source: dict[str, Any], versions: dict[str, str], target: dict[str, Any]) -> Contract:
    """IR files take float32 NCHW with a dynamic batch and return float32 logits, at every precision."""
    return base.with_io(
        format="openvino", precision=precision,
        input=TensorSpec(INPUT_NAME, base.model_input_shape(batch=-1), "float32", "NCHW"),
        output=TensorSpec(OUTPUT_NAME, (-1, base.num_classes), "float32"),
        source=dict(source), versions=dict(versions), target=dict(target),
    )


# ops whose port-1 input is a weight, and the ops a weight passes through on its way there
_WEIGHTED = ("Convolution", "GroupConvolution", "MatMul")
_WEIGHT_PATH = {"Convert", "Multiply", "Subtract", "Reshape", "FakeQuantize", "Transpose", "Unsqueeze"}
_OV_TYPES = {"f32": "float32", "f16": "float16", "i8": "int8", "u8": "uint8", "bf16": "bfloat16"}


def _port_dims(layer: Any, section: str, port: str) -> list[int] | None:
    for p in layer.iterfind(f"{section}/port"):
        if p.get("id") == port:
            return [max(int(d.text), 1) for d in p.iterfind("dim")]  # dynamic batch (-1) -> 1
    return None


def graph_stats(path: str) -> Stats:
    """Weights and MACs of Convolution/GroupConvolution/MatMul, and the type their weights are stored in."""
    root = ET.parse(path).getroot()
    layers = {el.get("id"): el for el in root.iterfind("layers/layer")}
    source = {(e.get("to-layer"), e.get("to-port")): e.get("from-layer") for e in root.iterfind("edges/edge")}

    def first_input(layer_id: str) -> str | None:
        ports = [p.get("id") for p in layers[layer_id].iterfind("input/port")]
        return source.get((layer_id, ports[0])) if ports else None

    def stored_type(layer_id: str | None) -> str:
        for _ in range(8):  # Const -> Convert -> Subtract -> Multiply -> ... -> the weighted op
            if layer_id is None or layer_id not in layers:
                return "?"
            el = layers[layer_id]
            if el.get("type") == "Const":
                data = el.find("data")
                return _OV_TYPES.get(data.get("element_type", "?") if data is not None else "?", "?")
            if el.get("type") not in _WEIGHT_PATH:
                return "?"
            layer_id = first_input(layer_id)
        return "?"

    params = macs = counted = 0
    dtypes: list[str] = []
    for lid, el in layers.items():
        kind = el.get("type")
        if kind not in _WEIGHTED:
            continue
        in_ports = [p.get("id") for p in el.iterfind("input/port")]
        w = _port_dims(el, "input", in_ports[1]) if len(in_ports) > 1 else None
        y = _port_dims(el, "output", el.find("output/port").get("id")) if el.find("output/port") is not None else None
        w_src = source.get((lid, in_ports[1])) if len(in_ports) > 1 else None
        if not w or not y or w_src is None or stored_type(w_src) == "?":
            continue  # an activation x activation MatMul, or a shape the file does not state
        counted += 1
        dtypes.append(stored_type(w_src))
        params += prod(w)
        if kind == "Convolution":  # weights O x I x KH x KW
            macs += prod(y) * prod(w[1:])
        elif kind == "GroupConvolution":  # weights G x O/G x I/G x KH x KW
            macs += prod(y) * prod(w[2:])
        else:  # MatMul, weight K x N (or N x K transposed): one product per output and K
            transpose_b = (el.find("data").get("transpose_b", "false") if el.find("data") is not None else "false") == "true"
            macs += prod(y) * (w[-1] if transpose_b else w[-2] if len(w) >= 2 else w[0])
    weighted = {lid for lid, el in layers.items() if el.get("type") in _WEIGHTED}
    for lid, el in layers.items():  # biases: a constant added right after a weighted op
        ports = [p.get("id") for p in el.iterfind("input/port")]
        if el.get("type") == "Add" and len(ports) == 2 and source.get((lid, ports[0])) in weighted \
                and stored_type(source.get((lid, ports[1]))) != "?":
            params += prod(_port_dims(el, "input", ports[1]) or [])
    if counted == 0:
        return {"params": None, "macs": None, "stats_from": "n/a (no Convolution/MatMul with constant weights found)"}
    return {"params": int(params), "macs": int(macs), "stats_from": "openvino IR (Convolution/GroupConvolution/MatMul)",
            "weight_precision": weight_precision(dtypes)}


FORMAT = ExportFormat(
    device=DEVICE_FORMATS["openvino"],
    precisions=PRECISIONS,
    layout="NCHW",
    description="OpenVINO IR (.xml + .bin) from the FP32 ONNX export, dynamic batch; contract in rt_info",
    options={
        "fp32": "openvino.convert_model(FP32 ONNX)",
        "fp16": "openvino.save_model(compress_to_fp16=True): float16 weights, f32 compute",
        "int8": f"nncf.quantize (preset {NNCF_PRESET}) with the real calibration images: {INT8_SCHEME}",
    },
    marker="D",
    produce=produce,
    graph_stats=graph_stats,
    requires=(Requirement("openvino", "pip install openvino"), Requirement("nncf", "pip install nncf", ("int8",))),
)
