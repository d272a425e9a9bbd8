"""The table's first row: the PyTorch checkpoint every export is made from.

It is a format in all but production: it has a contract (in the payload), graph
statistics (counted from the torch modules), a runtime (``torch``, through
``edgecxr.models.runtime``) and a place in every table, so readers ask the table instead of
testing for ``.pt``. ``source=True``: convert reads it and never writes it, ``--formats``
does not offer it, and bench shows it first in tables and uses it as the reference.
"""
from __future__ import annotations

from typing import Any

from edgecxr.convert.formats.base import ExportFormat, Production, Stats, prod
from edgecxr.device.formats import DEVICE_FORMATS


def _produce(p: Production, steps: dict[str, Any]) -> None:
    raise AssertionError("the checkpoint is convert's input, never its output")  # export_formats() leaves it out


def torch_stats(path: str) -> Stats:
    """Parameters of every torch module (BatchNorm scale and shift included) and MACs of the
    convolutions and linear layers, counted by forward hooks on one zero image."""
    import torch
    from torch import nn

    from edgecxr.models.factory import load_model

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


FORMAT = ExportFormat(
    device=DEVICE_FORMATS["pytorch"],
    precisions=("fp32",),
    layout="NCHW",
    description="PyTorch checkpoint: weights and contract (the source of every export)",
    options={"fp32": "edgecxr train"},
    marker="^",
    produce=_produce,
    graph_stats=torch_stats,
    source=True,
)
