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
  weights, per-tensor int8 activations observed (min/max for ``--calib-method minmax``,
  the default, else the quantizer's histogram observer) on the real calibration images
  convert already loaded, in batches of 32, then lowered like FP32 at batch 1.
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

from edgecxr.device.atomic import atomic_path
from edgecxr.errors import EdgecxrError

INT8_SCHEME = "PT2E XNNPACKQuantizer: symmetric per-channel s8 weights, per-tensor s8 activations, static"


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


CALIB_BATCH = 32


def int8_config(calib_method: str) -> Any:
    """XNNPACK's static symmetric per-channel config; ``minmax`` (convert's default, as for ONNX) observes
    activations by their min/max, any other method keeps the quantizer's own histogram observer (it
    minimises the L2 quantization error; on real CXRs it also cost about 1 s of CPU per image here)."""
    from dataclasses import replace

    with _quiet_experimental():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.observer import MinMaxObserver

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    if calib_method != "minmax":
        return config
    act = replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    return replace(config, input_activation=act, output_activation=act)


def clamp_observed_after_conv(graph: Any) -> int:
    """Observe a ReLU6 after its convolution, not the convolution before it; returns how many moved.

    XNNPACKQuantizer fuses conv+ReLU but treats ``hardtanh`` (ReLU6) as an op that shares
    its input's observer, so the int8 grid of every MobileNetV2/EfficientNet-Lite0 block
    spanned the unclamped convolution output (measured: MobileNetV2 80.7% top-1 agreement,
    -17.7 macro-F1 points; EfficientNet-Lite0 57.3%, -51.0). Observing the clamped output
    instead is what TFLite does, and XNNPACK fuses the clamp into the convolution either way.
    """
    import torch

    key = "quantization_annotation"
    moved = 0
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target not in (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default):
            continue
        conv = node.args[0]
        conv_note = getattr(conv, "meta", {}).get(key)
        if (getattr(conv, "target", None) is not torch.ops.aten.conv2d.default or len(conv.users) != 1
                or conv_note is None or conv_note.output_qspec is None):
            continue
        node.meta[key] = type(conv_note)(input_qspec_map={}, output_qspec=conv_note.output_qspec, _annotated=True)
        conv_note.output_qspec = None
        moved += 1
    return moved


def observer_name(calib_method: str) -> str:
    return "min/max" if calib_method == "minmax" else "histogram"


def quantize_int8(model: Any, shape: tuple[int, ...], calib_x: np.ndarray, calib_method: str = "minmax") -> Any:
    """PT2E: export with a dynamic batch, insert observers, run the calibration images in batches, convert."""
    import torch
    from torch.export import Dim
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with _quiet_experimental():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    if len(calib_x) == 0:
        raise EdgecxrError("ExecuTorch INT8 needs calibration images; none were given")
    class ClampAwareQuantizer(XNNPACKQuantizer):
        def annotate(self, model: Any) -> Any:
            model = super().annotate(model)
            clamp_observed_after_conv(model)
            return model

    quantizer = ClampAwareQuantizer().set_global(int8_config(calib_method))
    example = (torch.zeros((2, *shape[1:]), dtype=torch.float32),)  # batch 2: a batch of 1 would be specialised
    graph = torch.export.export(copy.deepcopy(model).eval(), example,
                                dynamic_shapes=({0: Dim("batch", min=1, max=4096)},)).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(0, len(calib_x), CALIB_BATCH):
            prepared(torch.from_numpy(np.ascontiguousarray(calib_x[i : i + CALIB_BATCH], dtype=np.float32)))
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
