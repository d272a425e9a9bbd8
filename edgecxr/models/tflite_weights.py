"""Recover float ImageNet weights for MobileNetV2 from an official TFLite file.

Hub downloads are impossible on an offline machine, yet such a machine often holds
an official quantized MobileNetV2 (it does here: the reference models). Its
convolutions are the same 52 layers, in the same order, as torchvision's
MobileNetV2, with batch norm folded in. Dequantizing them gives an ImageNet
initialisation good enough for transfer learning: the INT8 rounding (under 1% of
each channel's range) is far below what fine-tuning changes.

Batch norm is folded into the file's convolutions and cannot be split back
exactly. Loading it as identity + bias would be right in eval mode but wrong in
training, where batch norm normalises by batch statistics: every channel would be
rescaled to unit variance before the folded bias, which kills most ReLU6 units
(training then sits at chance). So ``unfold_batch_norm`` runs a few X-ray-like
images through the folded network and sets each batch norm to those statistics
(mean m, variance v, scale sqrt(v + eps), shift m + bias): the eval-mode function
is unchanged and training starts from what the file computes.

TensorFlow pads stride-2 convolutions on the bottom/right only while torchvision
pads all sides; ``tf_same_padding`` reproduces the TF padding for the check in the
tests, and fine-tuning adapts to the difference.

This module reads the file; ``edgecxr.models.weights.load_weights_file`` decides when
(``--weights FILE.tflite``), so neither needs the registry.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from edgecxr.errors import EdgecxrError
from edgecxr.models.nn_utils import conv_batch_norms

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")


def _dequantize(tensor: np.ndarray, q: dict, axis: int) -> np.ndarray:
    scales = np.asarray(q["scales"], dtype=np.float64)
    zeros = np.asarray(q["zero_points"], dtype=np.float64)
    if scales.size == 0:  # already float
        return tensor.astype(np.float32)
    shape = [1] * tensor.ndim
    if scales.size > 1:
        shape[axis] = -1
    return ((tensor.astype(np.float64) - zeros.reshape(shape)) * scales.reshape(shape)).astype(np.float32)


def read_tflite_convolutions(path: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Every convolution in execution order as ``(op, weight OIHW, bias)``, in float."""
    from edgecxr.models.tflite_graph import graph_interpreter

    if not os.path.exists(path):
        raise EdgecxrError(f"{path}: TFLite file not found")
    try:
        interp = graph_interpreter(path)
    except ValueError as exc:
        raise EdgecxrError(f"{path}: not a readable TFLite model ({str(exc).splitlines()[0][:120]})") from exc
    details = {t["index"]: t for t in interp.get_tensor_details()}
    convs = []
    for op in interp._get_ops_details():  # the public API has no op list; this one is stable since TF 2.5
        if op["op_name"] not in CONV_OPS:
            continue
        w_idx, b_idx = op["inputs"][1], op["inputs"][2]
        w = _dequantize(interp.get_tensor(w_idx), details[w_idx]["quantization_parameters"],
                        0 if op["op_name"] == "CONV_2D" else 3)
        b = _dequantize(interp.get_tensor(b_idx), details[b_idx]["quantization_parameters"], 0)
        # TFLite conv weights are OHWI, depthwise ones 1HWC; torch wants OIHW and C1HW
        w = w.transpose(0, 3, 1, 2) if op["op_name"] == "CONV_2D" else w.transpose(3, 0, 1, 2)
        convs.append((op["op_name"], np.ascontiguousarray(w), b))
    return convs


def mobilenet_v2_state_from_tflite(path: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict entries for every conv + BN of ``model`` (an edgecxr MobileNetV2);
    the file's classifier is dropped, the head stays as initialised."""
    convs = read_tflite_convolutions(path)
    pairs = conv_batch_norms(model.backbone)
    unpaired = [name for name, _conv, _bn_name, bn in pairs if bn is None]
    if unpaired:
        raise EdgecxrError(f"{unpaired[0]} is not followed by a batch norm; not a torchvision MobileNetV2")
    if len(convs) != len(pairs) + 1:
        raise EdgecxrError(
            f"{path}: {len(convs)} convolutions, a MobileNetV2 with its classifier has {len(pairs) + 1}; "
            "is it a MobileNetV2 1.0?"
        )
    state: dict[str, torch.Tensor] = {}
    for (op, w, b), (conv_name, conv, bn_name, bn) in zip(convs, pairs):
        if tuple(w.shape) != tuple(conv.weight.shape):
            raise EdgecxrError(f"{path}: {op} weight {tuple(w.shape)} does not fit {conv_name} {tuple(conv.weight.shape)}")
        prefix, bn_prefix = f"backbone.{conv_name}", f"backbone.{bn_name}"
        state[f"{prefix}.weight"] = torch.from_numpy(w)
        n = b.shape[0]
        state[f"{bn_prefix}.weight"] = torch.ones(n)
        state[f"{bn_prefix}.bias"] = torch.from_numpy(b)
        state[f"{bn_prefix}.running_mean"] = torch.zeros(n)
        state[f"{bn_prefix}.running_var"] = torch.full((n,), 1.0 - bn.eps)
    return state


def xray_like_batch(size: int, n: int = 24) -> torch.Tensor:
    """Synthetic X-ray-like images through the default preprocessing: batch-norm
    statistics without needing any data on the machine."""
    from edgecxr.data.synthetic import SYNTHETIC_CLASSES, make_image
    from edgecxr.device.preprocess import PreprocessSpec, preprocess

    spec = PreprocessSpec(size=size)
    imgs = [preprocess(make_image(SYNTHETIC_CLASSES[i % len(SYNTHETIC_CLASSES)], i, size), spec) for i in range(n)]
    return torch.from_numpy(np.stack(imgs))


@torch.no_grad()
def unfold_batch_norm(model: nn.Module, inputs: torch.Tensor) -> None:
    """Give every identity-folded batch norm the statistics of its input on ``inputs``."""
    stats: dict[nn.BatchNorm2d, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(bn: nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        x = args[0].double()
        stats[bn] = (x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False))

    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    handles = [bn.register_forward_hook(hook) for bn in bns]
    was_training = model.training
    model.eval()
    try:
        model(inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for bn in bns:
        mean, var = stats[bn]
        shift = bn.bias.double() - bn.weight.double() * bn.running_mean.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.copy_(mean + shift)


def tf_same_padding(model: nn.Module) -> nn.Module:
    """Make every stride-2 3x3 conv pad like TensorFlow's SAME (bottom/right only), in place."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d) and child.stride == (2, 2) and child.kernel_size == (3, 3):
                child.padding = (0, 0)
                setattr(parent, child_name, nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), child))
    return model
