"""A new export format is one module registered in the table: convert produces and
verifies it, bench and eval open it, without a change anywhere else.

The demonstration format is ONNX Runtime's own ``.ort`` flatbuffer format (a real
format: what ORT's mobile builds load), made from the FP32 ONNX export, with its
contract in a sidecar. Everything it needs is defined in this file.
"""
from __future__ import annotations

import json
import os
from typing import Any

import pytest

from edgecxr.convert.formats.base import ExportFormat, Production, Stats
from edgecxr.device.contract import Contract
from edgecxr.device.formats import DeviceFormat


def _produce(p: Production, steps: dict[str, Any]) -> None:
    import onnxruntime as ort

    from edgecxr.convert.formats.onnx.export import onnx_contract
    from edgecxr.device.atomic import atomic_path

    def make(dest: str) -> dict[str, Any]:
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.save_model_format", "ORT")
        with atomic_path(dest) as tmp:
            opts.optimized_model_filepath = tmp
            ort.InferenceSession(p.fp32_onnx, opts, providers=["CPUExecutionProvider"])
        c = onnx_contract(p.contract, "fp32", p.source, p.versions, p.plain_target)
        p.run.stage(dest, Contract.from_dict({**c.to_dict(), "format": "ort"}))  # written once, after verification
        return {"from": os.path.basename(p.fp32_onnx)}

    for step in steps.values():
        if p.fp32_onnx is None:
            p.run.skip(step, "FP32 ONNX export failed")
        else:
            p.run.do(step, lambda s=step: make(p.run.path(s)))


def _stats(path: str) -> Stats:
    return {"params": None, "macs": None, "stats_from": "n/a (ORT flatbuffer)"}


ORT_DEVICE = DeviceFormat("ort", ".ort", ("onnxruntime",), contract_in_file=False)
ORT_FORMAT = ExportFormat(device=ORT_DEVICE, precisions=("fp32",), layout="NCHW", description="ONNX Runtime .ort flatbuffer",
                          options={"fp32": "onnxruntime session.save_model_format=ORT"}, marker="P", produce=_produce,
                          graph_stats=_stats)


@pytest.fixture
def ort_registered():
    from edgecxr.convert import formats
    from edgecxr.device import runtimes

    module = runtimes.register_format(ORT_DEVICE)
    formats.register(ORT_FORMAT)
    yield ORT_FORMAT
    formats.FORMATS.remove(ORT_FORMAT)
    runtimes.unregister(module)


def test_a_registered_format_is_converted_verified_benchmarked_and_evaluated(ort_registered, trained_run, tmp_path):
    from edgecxr.bench.artifacts import collect
    from edgecxr.convert.formats import find_artifacts
    from edgecxr.convert.pipeline import ConvertOptions, convert_checkpoint
    from edgecxr.models.runtime import open_model

    out = tmp_path / "exp"
    rep = convert_checkpoint(str(trained_run / "best.pt"), str(out), ConvertOptions(formats=("onnx", "ort")),
                             progress=False, echo=lambda s: None)
    art = next(a for a in rep["artifacts"] if a["format"] == "ort")
    assert art["status"] == "ok" and art["file"] == "mobilenet_v2_fp32.ort", art
    assert art["verify"]["top1_agreement"] == 1.0 and art["verify"]["max_abs_logit_diff"] < 1e-3
    assert art["bytes"] == os.path.getsize(out / "mobilenet_v2_fp32.ort")  # the model, not its contract sidecar
    assert rep["how_produced"]["ort"] == {"fp32": "onnxruntime session.save_model_format=ORT"}
    # bench finds it through the table, with its companion; eval opens it through the one runtime interface
    assert [p for p, n in find_artifacts(str(out)) if n.format == "ort"] == [str(out / "mobilenet_v2_fp32.ort")]
    (found,) = [a for a in collect([str(out)]) if a.format == "ort"]
    assert found.files == [str(out / "mobilenet_v2_fp32.ort"), str(out / "mobilenet_v2_fp32.ort.json")]
    backend = open_model(str(out / "mobilenet_v2_fp32.ort"))
    assert backend.contract.arch == "mobilenet_v2" and backend.runtime_name == "onnxruntime"
    assert json.loads((out / "mobilenet_v2_fp32.ort.json").read_text())["selftest"]["images"]  # golden vectors stamped too
