"""Rewrite a TFLite file so identical quantization vectors are stored once.

A per-channel INT8 model stores, for every convolution, a scale and an int64 zero
point per output channel for the weights and again for the bias. The zero points
are all 0 (weights are symmetric), so in MobileNetV2 240 KB of a 2.71 MB file (9%)
is the same vectors written over and over by the TF converter.
FlatBuffers lets any number of tables point at one vector, so this pass serialises
the model again with identical scale/zero-point vectors shared. Nothing the
interpreter computes changes (the verification step runs the rewritten file);
weight buffers are left alone and stay 16-byte aligned as the converter wrote them.

Needs only ``flatbuffers`` and the TFLite schema module shipped with ai-edge-litert;
without them files are written as the converter made them.
"""
from __future__ import annotations

from typing import Any

import numpy as np

TFLITE_FILE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16
SHARED_DTYPES = (np.dtype("<i8"), np.dtype("<f4"))  # zero points and scales; never weight buffers


def _schema() -> Any:
    """ai-edge-litert's schema module; not TensorFlow's, which would load TF into the
    converting process (TF there makes torch's later triton import segfault)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return None
    return schema


def _sharing_builder() -> Any:
    import flatbuffers

    class SharingBuilder(flatbuffers.Builder):
        """Returns the earlier offset for a quantization vector it has already written."""

        def __init__(self, size: int) -> None:
            super().__init__(size)
            self.seen: dict[tuple[str, bytes], int] = {}
            self.shared_bytes = 0

        def CreateNumpyVector(self, x: np.ndarray) -> int:
            if x.dtype in SHARED_DTYPES:
                key = (x.dtype.str, x.tobytes())
                if key in self.seen:
                    self.shared_bytes += x.nbytes
                    return self.seen[key]
                self.seen[key] = offset = super().CreateNumpyVector(x)
                return offset
            if x.dtype == np.uint8 and x.size >= BUFFER_ALIGNMENT:
                self.Prep(BUFFER_ALIGNMENT, x.size)  # weights start on a 16-byte boundary, like the converter's
            return super().CreateNumpyVector(x)

    return SharingBuilder


def share_quantization_vectors(data: bytes) -> tuple[bytes, int]:
    """The same model with shared quantization vectors, and the bytes that saved.

    Returns ``data`` unchanged when sharing saves nothing (float models), when the
    file keeps its weights outside the flatbuffer (over 2 GB models), which this pass
    does not handle, or when ai-edge-litert is not installed.
    """
    schema = _schema()
    if schema is None:
        return data, 0
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    if any(b.offset for b in model.buffers or []):
        return data, 0
    builder = _sharing_builder()(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_FILE_IDENTIFIER)
    out = bytes(builder.Output())
    if builder.shared_bytes == 0 or len(out) >= len(data):
        return data, 0
    return out, len(data) - len(out)
