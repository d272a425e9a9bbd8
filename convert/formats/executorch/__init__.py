"""ExecuTorch: ``<arch>_<precision>.pte``, PyTorch's own on-device program with the XNNPACK
delegate, made from the PyTorch model by ``torch.export`` (``convert/formats/executorch/export.py``):
FP32, FP16 (float16 compute where the CPU has it) and INT8 by PT2E quantization with
``XNNPACKQuantizer`` calibrated on the same real images as every other INT8 file.

The contract is a sidecar, ``<file>.pte.json``. A ``.pte`` could carry data as a
constant method, but convert stamps the golden vectors after the file is written and
verified; a sidecar leaves the verified program bytes untouched, and the device reads
it without starting the runtime.
"""
from __future__ import annotations

import os
from typing import Any

from edgecxr.convert.formats.base import PRECISIONS, ExportFormat, Production, Requirement, Stats
from edgecxr.device.contract import Contract, TensorSpec
from edgecxr.device.formats import DEVICE_FORMATS, read_contract

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def pte_contract(base: Contract, precision: str, source: dict[str, Any], versions: dict[str, str],
                 target: dict[str, Any]) -> Contract:
    """A .pte takes one float32 NCHW image (batch 1) and returns float32 logits, at every precision."""
    from edgecxr.versions import tool_versions

    return base.with_io(format="executorch", precision=precision,
                        input=TensorSpec(INPUT_NAME, base.model_input_shape(batch=1), "float32", "NCHW"),
                        output=TensorSpec(OUTPUT_NAME, (1, base.num_classes), "float32"),
                        source=dict(source), versions={**versions, **tool_versions(("executorch", "torchao"))},
                        target=dict(target))


def produce(p: Production, steps: dict[str, Any]) -> None:
    run = p.run
    for precision, step in steps.items():
        run.do(step, lambda pr=precision, s=step: _make(p, pr, run.path(s)))


def _make(p: Production, precision: str, dest: str) -> dict[str, Any]:
    from edgecxr.convert.formats.executorch import export as ete

    c = p.contract
    shape = c.model_input_shape(batch=1)
    details: dict[str, Any] = {}
    if precision == "fp32":
        module = p.torch_model.eval()
    elif precision == "fp16":
        module = ete.fp16_module(p.torch_model)
    else:
        module = ete.quantize_int8(p.torch_model, shape, p.calib.nchw(c.preprocess), p.calib_method)
        details.update(calibration_images=len(p.calib), scheme=f"{ete.INT8_SCHEME} ({ete.observer_name(p.calib_method)} observer)")
    details.update(ete.lower(module, shape, dest))
    is_int8 = precision == "int8"
    target = dict(p.plain_target, runtime="executorch", int8_scheme=details["scheme"]) if is_int8 else p.plain_target
    p.run.stage(dest, pte_contract(c, precision, p.int8_source if is_int8 else p.source, p.versions, target))
    return details




def graph_stats(path: str) -> Stats:
    """Parameters and MACs of the checkpoint the contract names (same SHA-256 only): the
    program is one XNNPACK blob that states no layer shapes, and lowering changes neither count
    (its parameters include BatchNorm's, about 1% above a folded graph's)."""
    from edgecxr.convert.formats.checkpoint import torch_stats
    from edgecxr.models.checkpoint import file_sha256

    contract = read_contract(path)
    source = contract.source if contract is not None else {}
    ckpt = source.get("checkpoint")
    if not ckpt or not os.path.exists(ckpt) or file_sha256(ckpt) != source.get("checkpoint_sha256"):
        return {"params": None, "macs": None, "stats_from": "n/a (XNNPACK delegate blob; its source checkpoint is not here)"}
    stats = torch_stats(ckpt)
    return {**stats, "stats_from": f"source checkpoint {os.path.basename(ckpt)} (torch modules)", "weight_precision": contract.precision}


FORMAT = ExportFormat(
    device=DEVICE_FORMATS["executorch"],
    precisions=PRECISIONS,
    layout="NCHW",
    description="ExecuTorch .pte (torch.export, XNNPACK delegate, batch 1); contract in a <file>.pte.json sidecar",
    options={
        "fp32": "torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> to_executorch",
        "fp16": "model.half() behind float32 I/O casts, XNNPACK fp16 (weights kept fp32 in the file; float16 compute only on "
                "CPUs with fp16 arithmetic)",
        "int8": "PT2E XNNPACKQuantizer with the real calibration images: symmetric per-channel s8 weights, per-tensor s8 "
                "activations, static (--calib-method minmax: min/max observer, else histogram); --keep-float does not apply",
    },
    marker="X",
    produce=produce,
    graph_stats=graph_stats,
    requires=(Requirement("torchao", "pip install executorch", ("int8",)),),
)
