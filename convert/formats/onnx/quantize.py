"""ONNX FP16 and INT8 variants of the FP32 export.

INT8 is ONNX Runtime static quantization in QDQ format with per-channel weights and
*unsigned* 8-bit activations (on x86 only u8 activations reach the fast kernels).
The weight type is the INT8 target's choice (``edgecxr/models/int8_target.py``): u8 (portable,
exact on every CPU) or full-range s8 (fast with VNNI, saturating without it).
Calibration is fed in batches through ``CalibStridedMinMax`` so that histogram
methods (entropy, percentile) never hold every activation of every image at once.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from typing import Any, Iterable

import numpy as np

from edgecxr.errors import EdgecxrError

CALIB_METHODS = ("minmax", "entropy", "percentile", "minmax-avg")
CALIB_BATCH = 16


class BatchReader:
    """ORT ``CalibrationDataReader`` over a float32 NCHW array, in fixed-size batches.

    ``set_range`` and ``len`` follow ORT's strided-calibration protocol: each
    ``collect_data`` call then sees one batch and the calibrator merges ranges.
    """

    def __init__(self, input_name: str, x: np.ndarray, batch: int = CALIB_BATCH) -> None:
        self.input_name = input_name
        self.batches = [np.ascontiguousarray(x[i : i + batch]) for i in range(0, len(x), batch)]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = iter(self.batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self._iter, None)
        return None if b is None else {self.input_name: b}

    def rewind(self) -> None:
        self.set_range(0, len(self.batches))

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates the reader
        return iter({self.input_name: b} for b in self.batches)


def _calibrate_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "minmax-avg": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    if name not in table:
        raise EdgecxrError(f"--calib-method {name!r}: choose one of {', '.join(CALIB_METHODS)}")
    return table[name]


def node_names(model_path: str) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(model_path, load_external_data=False).graph.node]


def resolve_keep_float(model_path: str, keep_float: Iterable[str]) -> list[str]:
    """Match ``--keep-float`` entries to node names: exact name, or a unique substring.

    ``debug-quant`` prints exact names; a substring like ``head`` is accepted when
    it is unambiguous enough for a user to type. Unknown names are an error, never
    silently ignored (the user believes that layer stays in float).
    """
    wanted = [k.strip() for k in keep_float if k.strip()]
    if not wanted:
        return []
    names = node_names(model_path)
    out: list[str] = []
    for w in wanted:
        if w in names:
            out.append(w)
            continue
        hits = [n for n in names if w in n]
        if not hits:
            raise EdgecxrError(f"--keep-float {w!r}: no node of that name; run `edgecxr debug-quant` to list node names")
        out.extend(hits)
    return sorted(set(out), key=names.index)


def preprocess_for_quant(src: str, dest: str) -> str:
    """ORT's recommended pre-pass (shape inference + graph optimisation); falls back to ``src``."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(src, dest, skip_symbolic_shape=False)
        return dest
    except Exception:  # the pre-pass is an optimisation only; quantizing the original is still correct
        return src


def quantize_int8(fp32_path: str, dest_tmp: str, calib_nchw: np.ndarray, method: str = "minmax",
                  keep_float: Iterable[str] = (), input_name: str = "input", pre_process: bool = True,
                  reduce_range: bool = False, activations: str = "uint8", weights: str = "uint8",
                  calibration_cache: str | None = None) -> dict[str, Any]:
    """Write the INT8 QDQ model to ``dest_tmp`` (a temp path the caller renames).

    ``pre_process=False`` keeps tensor names identical to ``fp32_path``, which
    ``debug-quant`` needs to match activations between the two models.
    ``activations``/``weights`` (``uint8``/``int8``) and ``reduce_range`` (7-bit s8
    weights) select the scheme; the defaults are ``--target portable``'s (u8 x u8).
    ``calibration_cache``: a JSON file of tensor ranges (ORT writes it on the first
    call, later calls reuse it), so accuracy control can requantize with other
    ``keep_float`` sets without recalibrating; it must come from the same source model.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    qtypes = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    cal = _calibrate_method(method)
    with tempfile.TemporaryDirectory(prefix="edgecxr-quant-") as tmp:
        src = preprocess_for_quant(fp32_path, os.path.join(tmp, "pre.onnx")) if pre_process else fp32_path
        excluded = resolve_keep_float(src, keep_float)
        # MinMax keeps only per-run ReduceMin/ReduceMax outputs, so all batches go through one
        # collect call and "minmax-avg" is a true mean of per-batch ranges. Histogram methods
        # keep whole tensors: one batch per collect call (ORT's strided protocol) bounds memory.
        histogram = method in ("entropy", "percentile")
        reader = BatchReader(input_name, calib_nchw, CALIB_BATCH)
        extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": weights == "int8"}
        if histogram:
            extra["CalibStridedMinMax"] = 1
        if method == "percentile":
            extra["CalibPercentile"] = 99.999
        if method == "minmax-avg":  # mean of per-batch min/max instead of the global extremes
            extra["CalibMovingAverage"] = True
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints histogram progress lines
            quantize_static(
                src, dest_tmp, reader, quant_format=QuantFormat.QDQ, activation_type=qtypes[activations],
                weight_type=qtypes[weights], per_channel=True, reduce_range=reduce_range, calibrate_method=cal,
                nodes_to_exclude=excluded, extra_options=extra, calibration_cache_path=calibration_cache,
            )
    if excluded:  # else ONNX Runtime requantizes them per-tensor when it opens the file (float_guard.py)
        from edgecxr.convert.formats.onnx.float_guard import guard_float_nodes

        guard_float_nodes(dest_tmp, excluded)
    grid = f"{weights} per-channel" + (", 7-bit range (reduce_range)" if reduce_range else ", full range")
    return {"calib_method": method, "calib_images": int(len(calib_nchw)), "activations": activations, "weights": grid,
            "quant_format": "QDQ", "keep_float": excluded}


def convert_fp16(fp32_path: str, dest_tmp: str) -> dict[str, Any]:
    """FP16 weights and compute with float32 inputs/outputs, so callers feed the same arrays."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(fp32_path)
    with warnings.catch_warnings(record=True) as caught:  # one warning per tiny weight: counted, not printed
        warnings.simplefilter("always")
        model16 = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(model16, dest_tmp)
    truncated = sum(1 for w in caught if "truncated" in str(w.message))
    return {"io": "float32", "weights": "float16", "values_clamped_to_fp16_range": truncated}
