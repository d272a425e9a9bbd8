"""Quantization-aware fine-tuning (``edgecxr train --qat``).

Post-training INT8 of the CXR MobileNetV2 flipped 2% of its test predictions
(6 of 300, both runtimes). Fine-tuning with the deployment's rounding simulated
in the forward pass lets the weights settle where rounding does not hurt. The
simulation copies what ``edgecxr convert --int8`` deploys (ONNX Runtime QDQ and
TFLite full-integer):

* weights: per output channel, taken *after* folding the following batch norm into
  the convolution, as both runtimes quantize the folded weight, on the grid of the
  INT8 target that will be deployed: u8 (255 levels around zero point 128, as ONNX Runtime makes them)
  for ``portable`` (ONNX Runtime u8 x u8, exact on every CPU), symmetric [-127, 127]
  for the full-range ``x86-vnni``/``arm64`` files and TFLite. Batch-norm statistics
  are frozen so the fold is fixed;
* activations: per tensor, asymmetric 8-bit, with ranges tracked as a moving
  average of batch min/max, at the points the runtimes requantize: the model
  input, every activation output (ReLU6 fused into its conv), every batch norm
  with no activation after it (linear bottlenecks), residual sums (the blocks
  the backbone's registry entry declares, ``BackboneConfig.residual_blocks``), the
  pooled features and the logits.

Gradients pass straight through the rounding. Nothing here changes the model's
parameters or state-dict keys: the checkpoint stays an ordinary float checkpoint
that ``convert`` quantizes as usual, so ``remove()`` restores the plain model.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from edgecxr.models.nn_utils import conv_batch_norms
from edgecxr.models.registry import get_config

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU)
WEIGHT_QMAX = 127  # the symmetric 8-bit grid (TFLite, ONNX --target x86-vnni/arm64)
Grid = tuple[bool, int]  # (asymmetric, levels - 1): Int8Target.weight_grid
PORTABLE_GRID: Grid = (False, 255)  # u8 weights (symmetric around 128, as ORT makes them), the default --target portable
ACT_LEVELS = 255
EMA_MOMENTUM = 0.01


def fake_quant_per_channel(w: torch.Tensor, fold: torch.Tensor | None = None, qmax: int = WEIGHT_QMAX,
                           asymmetric: bool = False) -> torch.Tensor:
    """``w`` rounded on the per-output-channel grid of ``w * fold``, straight-through.

    ``qmax`` 127: the s8 grid [-127, 127], scale max|w| / 127. ``qmax`` 255 (u8 weights):
    ONNX Runtime quantizes per-channel u8 weights symmetrically too, around zero point
    128: scale 2 max|w| / 255, levels [-128, 127]. ``asymmetric`` spans [min, max] instead.
    """
    shape = (-1,) + (1,) * (w.dim() - 1)
    k = fold.reshape(shape) if fold is not None else torch.ones(1, dtype=w.dtype, device=w.device)
    folded = w * k
    dims = tuple(range(1, w.dim()))
    if asymmetric:
        lo = folded.detach().amin(dim=dims, keepdim=True).clamp_max(0.0)
        hi = folded.detach().amax(dim=dims, keepdim=True).clamp_min(0.0)
        scale = ((hi - lo) / qmax).clamp_min(1e-12)
        zero = torch.round(-lo / scale)
        q = (torch.clamp(torch.round(folded / scale) + zero, 0, qmax) - zero) * scale / k
    else:
        half = qmax / 2 if qmax > 127 else qmax  # 255 levels around zero point 128, or [-qmax, qmax]
        lo, hi = (-(qmax // 2) - 1, qmax // 2) if qmax > 127 else (-qmax, qmax)
        scale = folded.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / half
        q = torch.clamp(torch.round(folded / scale), lo, hi) * scale / k
    return w + (q - w).detach()


class ActivationQuant:
    """One per-tensor asymmetric 8-bit fake quantizer with a moving-average range."""

    def __init__(self) -> None:
        self.lo: float | None = None
        self.hi: float | None = None

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if training or self.lo is None:
            lo, hi = float(x.detach().min()), float(x.detach().max())
            if self.lo is None:
                self.lo, self.hi = lo, hi
            else:
                self.lo += EMA_MOMENTUM * (lo - self.lo)
                self.hi += EMA_MOMENTUM * (hi - self.hi)
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)  # zero must be exact, as in both runtimes
        scale = max(hi - lo, 1e-8) / ACT_LEVELS
        zero = round(-lo / scale)
        q = (torch.clamp(torch.round(x / scale) + zero, 0, ACT_LEVELS) - zero) * scale
        return x + (q - x).detach()


def _bn_fold(bn: nn.BatchNorm2d) -> torch.Tensor:
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    k = gamma / torch.sqrt(bn.running_var + bn.eps)
    # a channel whose scale is ~0 contributes nothing; keep the division finite
    return torch.where(k.abs() < 1e-8, torch.full_like(k, 1e-8), k)


class QATHandle:
    """What ``enable_qat`` installed, to freeze batch norm each epoch and to undo it all."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.hooks: list = []
        self.patched: list[nn.Module] = []
        self.activation_points = 0
        self.weight_layers = 0
        self.weight_grid: Grid = (False, WEIGHT_QMAX)

    def freeze_batch_norm(self) -> None:
        """Call after ``model.train()``: statistics stay fixed so the folded weights do too."""
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        for m in self.patched:
            del m.forward  # back to the class's forward
        self.hooks, self.patched = [], []


def _patch_weights(module: nn.Module, fold: Callable[[], torch.Tensor] | None, grid: Grid) -> None:
    asym, qmax = grid
    if isinstance(module, nn.Conv2d):
        def forward(x: torch.Tensor, m: nn.Conv2d = module) -> torch.Tensor:
            return m._conv_forward(x, fake_quant_per_channel(m.weight, fold() if fold else None, qmax, asym), m.bias)
    else:
        def forward(x: torch.Tensor, m: nn.Linear = module) -> torch.Tensor:  # type: ignore[misc]
            return nn.functional.linear(x, fake_quant_per_channel(m.weight, None, qmax, asym), m.bias)
    module.forward = forward  # instance attribute: state dict and class untouched


def _output_hook(q: ActivationQuant):
    def hook(m: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        return q(out, m.training)
    return hook


def enable_qat(model: nn.Module, arch: str, weight_grid: Grid = PORTABLE_GRID) -> QATHandle:
    """Install weight and activation fake quantization on an edgecxr classifier of architecture ``arch``.

    ``weight_grid`` is the deployed scheme's (``Int8Target.weight_grid``): the default
    simulates the portable ONNX file (u8 weights, zero point 128).
    """
    handle = QATHandle(model)
    handle.weight_grid = weight_grid
    # weights: each conv folded with the batch norm that directly follows it; linear layers as they are
    weighted = [(conv, bn) for _name, conv, _bn_name, bn in conv_batch_norms(model)]
    weighted += [(m, None) for m in model.modules() if isinstance(m, nn.Linear)]
    for m, bn in weighted:
        _patch_weights(m, (lambda bn=bn: _bn_fold(bn)) if bn is not None else None, weight_grid)
        handle.patched.append(m)
    handle.weight_layers = len(weighted)
    # activations: the points where the deployed graph requantizes
    residual_blocks = get_config(arch).residual_blocks
    residual = {id(m) for m in residual_blocks(model)} if residual_blocks else set()
    points: list[nn.Module] = []
    followed_by_activation: set[int] = set()
    for m in model.modules():
        if isinstance(m, nn.Sequential):
            kids = list(m.children())
            for a, b in zip(kids, kids[1:]):
                if isinstance(b, ACTIVATIONS):
                    followed_by_activation.add(id(a))
    for m in model.modules():
        if isinstance(m, ACTIVATIONS):
            points.append(m)
        elif isinstance(m, nn.BatchNorm2d) and id(m) not in followed_by_activation:
            points.append(m)
        elif id(m) in residual:  # residual sums
            points.append(m)
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.Linear)):
            points.append(m)
    for m in points:
        handle.hooks.append(m.register_forward_hook(_output_hook(ActivationQuant())))
    q_in = ActivationQuant()
    handle.hooks.append(model.register_forward_pre_hook(lambda m, args: (q_in(args[0], m.training),) + tuple(args[1:])))
    handle.activation_points = len(points) + 1
    return handle
