"""Keep ``--keep-float`` layers float when ONNX Runtime opens the file, not only in the file.

ONNX Runtime's ``WeightBiasQuantization`` graph transformer (basic level, on by
default) finds a Conv/ConvTranspose/Gemm whose input comes from a DequantizeLinear
and whose weight is a float initializer, and quantizes that weight itself,
*per-tensor* int8, plus the bias. A layer the quantizer was told to exclude
(``nodes_to_exclude``) is therefore requantized at session start, more coarsely than
the layers around it: measured on a conv with one outlier weight per row, the
excluded layer still destroyed the model until this guard was added.

The transformer skips a node whose bias is not an initializer. So each excluded
node's bias is stored as int32 behind a DequantizeLinear whose scale keeps full
float precision (largest magnitude / 2^30); a node without a bias gets a zero one
the same way. ONNX Runtime does not constant-fold DequantizeLinear, so the bias stays
a DequantizeLinear output and the layer runs in float with its float weights.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

_GUARDED = {"Conv", "ConvTranspose", "Gemm"}
_INT32_RANGE = 2.0**30


def _out_channels(op: str, weight: np.ndarray, node: object) -> int:
    if op == "Conv":
        return int(weight.shape[0])
    if op == "ConvTranspose":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)  # type: ignore[attr-defined]
        return int(weight.shape[1] * group)
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)  # type: ignore[attr-defined]
    return int(weight.shape[0] if trans_b else weight.shape[1])


def guard_float_nodes(path: str, nodes: Iterable[str]) -> list[str]:
    """Rewrite ``path`` in place so the named nodes stay float in ONNX Runtime; returns the nodes changed."""
    import onnx
    from onnx import helper, numpy_helper

    wanted = set(nodes)
    if not wanted:
        return []
    model = onnx.load(path)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    changed, new_nodes = [], []
    for node in g.node:
        if node.name not in wanted or node.op_type not in _GUARDED or len(node.input) < 2:
            continue
        src = producer.get(node.input[0])
        if src is None or src.op_type != "DequantizeLinear" or node.input[1] not in inits:
            continue  # the transformer's pattern does not match: nothing to guard
        weight = numpy_helper.to_array(inits[node.input[1]])
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in inits:
                continue  # already not an initializer
            bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        else:
            bias = np.zeros(_out_channels(node.op_type, weight, node), dtype=np.float64)
        peak = float(np.abs(bias).max()) if bias.size else 0.0
        scale = np.float32(peak / _INT32_RANGE if peak > 0 else 1.0)
        stem = f"{node.name}_float_bias"
        q = np.round(bias / float(scale)).astype(np.int32)
        g.initializer.extend([numpy_helper.from_array(q, stem + "_int32"), numpy_helper.from_array(np.array(scale, np.float32), stem + "_scale"),
                              numpy_helper.from_array(np.array(0, np.int32), stem + "_zero_point")])
        new_nodes.append(helper.make_node("DequantizeLinear", [stem + "_int32", stem + "_scale", stem + "_zero_point"], [stem], name=stem))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = stem
        changed.append(node.name)
    if changed:
        kept = list(g.node)
        del g.node[:]
        g.node.extend(new_nodes + kept)  # constants first: the graph stays in topological order
        used = {i for n in g.node for i in n.input}
        stale = [i for i in g.initializer if i.name not in used]  # the float biases just replaced
        for init in stale:
            g.initializer.remove(init)
        onnx.save(model, path)
    return changed
