"""edgecxr.convert stage: checkpoint -> ONNX / TFLite (FP32, FP16, INT8), verified.

Python API: :func:`edgecxr.convert.pipeline.convert_checkpoint`; the formats table
shared with bench: :mod:`edgecxr.convert.formats`.
"""
