"""PyTorch -> ExecuTorch ``.pte`` with the XNNPACK delegate: FP32, FP16 and PT2E INT8.

ExecuTorch is made from the PyTorch model itself (``torch.export``), not from the ONNX
file: it is PyTorch's own path to the device, and every op of the backbones here
lowers to XNNPACK, so the program is one delegate call (``details["delegated"]``).

- FP32: ``torch.export`` -> ``to_edge_transform_and_lower(XnnpackPartitioner)`` ->
  ``to_executorch``.
- FP16: the model in float16 behind float32 input/output casts (the casts run as
  portable kernels outside the delegate, so the file takes and returns float32 like
  every other artifact). XNNPACK keeps convolution weights in float32 in the file
  (its serializer forces them to fp32 and converts at load), so the file is as large as
  FP32; it computes in float16 only on CPUs with float16 arithmetic (ARMv8.2+,
  AVX512-FP16). On x86 without AVX512-FP16 (the Zen 4 here has F16C only) it converts
  and was about 2x slower than FP32, measured.
- INT8: PT2E static quantization with ``XNNPACKQuantizer``: symmetric per-channel int8
  weights, per-tensor int8 activations (the quantizer's histogram observer), observed
  on the real calibration images convert already loaded, then lowered like FP32.
  The input and output stay float32 (quantize/dequantize run inside the delegate).
  XNNPACK's s8 x s8 kernels widen before multiplying, so the file is exact on every
  CPU (no VNNI requirement), as TFLite INT8 through the same library is.

The batch is fixed at 1 (what a device classifies); ``Backend.predict`` loops batches.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from edgecxr.atomic import atomic_path
from edgecxr.errors import EdgecxrError

INT8_SCHEME = "PT2E XNNPACKQuantizer: symmetric per-channel s8 weights, per-tensor s8 activations (histogram observer), static"


@contextmanager
def _quiet_experimental() -> Iterator[None]:
    """ExecuTorch marks its Python APIs experimental with a warning on every import; only that one is hidden."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This API is experimental")
        yield


def _example(shape: tuple[int, ...]) -> tuple[Any, ...]:
    import torch

    return (torch.zeros(shape, dtype=torch.float32),)


def fp16_module(model: Any) -> Any:
    """The model in float16, taking and returning float32 (the contract of every artifact)."""
    import torch

    class Float16Io(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner.half()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x.half()).float()

    return Float16Io(copy.deepcopy(model).eval())


def quantize_int8(model: Any, shape: tuple[int, ...], calib_x: np.ndarray) -> Any:
    """PT2E: export, insert observers, run the calibration images one by one (batch 1, as exported), convert."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with _quiet_experimental():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

    if len(calib_x) == 0:
        raise EdgecxrError("ExecuTorch INT8 needs calibration images; none were given")
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    graph = torch.export.export(copy.deepcopy(model).eval(), _example(shape)).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(len(calib_x)):
            prepared(torch.from_numpy(np.ascontiguousarray(calib_x[i : i + 1], dtype=np.float32)))
    return convert_pt2e(prepared)


def lower(module: Any, shape: tuple[int, ...], dest: str) -> dict[str, Any]:
    """Export, lower to XNNPACK, write ``dest`` atomically; returns what ran outside the delegate."""
    import torch

    with _quiet_experimental():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(module, _example(shape))
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    graph = edge.exported_program().graph_module.graph
    calls = [n for n in graph.nodes if n.op == "call_function"]
    delegated = sum(1 for n in calls if "executorch_call_delegate" in str(n.target))
    outside = sorted({str(getattr(n.target, "__name__", n.target)) for n in calls
                      if "executorch_call_delegate" not in str(n.target) and "getitem" not in str(n.target)})
    if delegated == 0:
        raise EdgecxrError("XNNPACK took no part of the graph; the .pte would run on portable kernels only")
    buffer = edge.to_executorch().buffer
    with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
        fh.write(buffer)
    return {"delegates": delegated, "ops_outside_delegate": outside}
