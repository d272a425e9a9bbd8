"""Parameter count and multiply-accumulates, read from each file's own graph.

Counting from the artifact itself (not from the checkpoint it came from) is what
makes a foreign model comparable: a TFLite file from elsewhere has no checkpoint.
Only the layers that dominate the work are counted (convolutions, fully connected
layers and matrix products), and parameters are the weights and biases of those
layers, so BatchNorm folded into a convolution is counted once as its bias. A
checkpoint counts ``torch`` parameters (BatchNorm scale and shift included), so its
figure is slightly above the exported graphs' (about 1% for MobileNetV2). Anything
not computed is ``None`` and prints as n/a.
"""
from __future__ import annotations

from edgecxr.convert.formats.base import Stats


def graph_stats(path: str) -> Stats:
    """``{"params": int|None, "macs": int|None, "stats_from": str}``: every format, the checkpoint
    included, through its own ``graph_stats`` in the formats table."""
    from edgecxr.convert.formats import format_of

    try:
        fmt = format_of(path)
        if fmt is not None:
            return fmt.graph_stats(path)
    except Exception as exc:  # a graph we cannot analyse must not stop the benchmark
        return {"params": None, "macs": None, "stats_from": f"n/a ({type(exc).__name__}: {str(exc)[:100]})"}
    return {"params": None, "macs": None, "stats_from": "n/a"}
