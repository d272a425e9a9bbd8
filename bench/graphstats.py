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

from typing import Any

from edgecxr.convert.formats.base import Stats, prod


def graph_stats(path: str) -> Stats:
    """``{"params": int|None, "macs": int|None, "stats_from": str}``: checkpoints here, every
    export format through its own ``graph_stats`` in the formats table."""
    from edgecxr.convert.formats import format_of
    from edgecxr.runtime import is_checkpoint

    try:
        if is_checkpoint(path):
            return torch_stats(path)
        fmt = format_of(path)
        if fmt is not None:
            return fmt.graph_stats(path)
    except Exception as exc:  # a graph we cannot analyse must not stop the benchmark
        return {"params": None, "macs": None, "stats_from": f"n/a ({type(exc).__name__}: {str(exc)[:100]})"}
    return {"params": None, "macs": None, "stats_from": "n/a"}


# --------------------------------------------------------------------------- torch
def torch_stats(path: str) -> Stats:
    import torch
    from torch import nn

    from edgecxr.models import load_model

    model, contract = load_model(path)
    macs = 0

    def conv_hook(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal macs
        k = prod(mod.weight.shape[1:])  # (in/groups) * kh * kw
        macs += out.numel() * k

    def linear_hook(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal macs
        macs += out.numel() * mod.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    shape = contract.model_input_shape()
    with torch.inference_mode():
        model(torch.zeros(shape, dtype=torch.float32))
    for h in handles:
        h.remove()
    return {"params": int(sum(p.numel() for p in model.parameters())), "macs": int(macs), "stats_from": "torch modules"}
