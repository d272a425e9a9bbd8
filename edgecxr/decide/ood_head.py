"""The out-of-distribution score carried inside the model graph, in the logits themselves.

Measured on the README's models (docs/results/decision.md "Refusing what is not a chest X-ray"), scores computed from the three
logits alone (max-softmax, energy, Mahalanobis on logits) let 46-80% of photos through
at 95% TPR, while a class-conditional Mahalanobis distance on the pooled features
refuses all of them. Carrying features out of every format (a second graph output in
ONNX, TFLite, OpenVINO, ncnn, ExecuTorch, each with its own output ordering and INT8
output quantization, plus a 1280-wide projection in the contract) would touch every
converter and runtime. Softmax does not change when the same number is subtracted
from every logit, so the head here outputs

    logits' = (W f + b - mean_k(W f + b)) - r(f)

where ``r`` is the Mahalanobis distance of the pooled features ``f`` (PCA-reduced,
whitened, nearest class mean) divided by its 95th percentile on the training images
and clipped to [0, CAP]. Before the distance the features go through a fixed transform
(``TRANSFORMS``): the default ``sqrt_l2`` takes the square root of the (non-negative,
ReLU6-sparse) pooled features and scales them to unit length. Measured on cached
features (docs/results/decision.md "Refusing what is not a chest X-ray"): raw features worked for
MobileNetV2 (photos AUROC 0.9995) but not EfficientNet-Lite0 (0.845, 31% of photos
refused); unit length alone (Mahalanobis++, Mueller & Hein 2025) fixed Lite0 but let
1.3% of MobileNetV2's photos through; both together refused every photo and document
for both models. Probabilities, labels, temperature scaling and conformal
sets are unchanged bit for bit in exact arithmetic; the device recovers the score as
``r = -mean(logits')`` with numpy (``device/ood.py``), from the one output every
format already has. The numbers live in the checkpoint (``payload["ood_head"]``) and
``edgecxr.models.factory.load_model`` attaches the head, so every ``convert`` exports it.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

DEFAULT_DIMS = 256  # PCA dimensions of the within-class feature residuals (measured: docs/results/decision.md "Refusing what is not a chest X-ray")
CAP = 4.0  # r is clipped here: enough to refuse, small enough not to widen the INT8 output range much (the not-a-CXR cut stays below it: ood_cuts.not_cxr_cut)
METHOD = "feature_mahalanobis"
TRANSFORMS = ("none", "sqrt", "l2", "sqrt_l2")
DEFAULT_TRANSFORM = "sqrt_l2"
_EPS = 1e-12  # unit length of an all-zero feature vector stays zero instead of NaN


def transform_features(f: np.ndarray, transform: str) -> np.ndarray:
    """The numpy twin of :meth:`OodHead.transform` (fitting and checks)."""
    f = np.asarray(f, dtype=np.float64)
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown OOD feature transform {transform!r}: choose one of {', '.join(TRANSFORMS)}")
    if transform in ("sqrt", "sqrt_l2"):
        f = np.sqrt(np.maximum(f, 0.0))
    if transform in ("l2", "sqrt_l2"):
        f = f / np.sqrt((f * f).sum(axis=1, keepdims=True) + _EPS)
    return f


class OodHead(nn.Module):
    """Replaces ``CXRClassifier.head``: centred class logits minus the clipped OOD score."""

    def __init__(self, linear: nn.Linear, numbers: dict[str, Any]) -> None:
        super().__init__()
        w = linear.weight.detach().double()
        b = linear.bias.detach().double()
        self.classify = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():  # centring folded into the weights: sum of outputs is 0 before the shift
            self.classify.weight.copy_((w - w.mean(0, keepdim=True)).float())
            self.classify.bias.copy_((b - b.mean()).float())
        proj = torch.as_tensor(np.asarray(numbers["projection"]), dtype=torch.float64)  # D x k
        mean = torch.as_tensor(np.asarray(numbers["mean"]), dtype=torch.float64)
        self.project = nn.Linear(proj.shape[0], proj.shape[1])
        with torch.no_grad():
            self.project.weight.copy_(proj.T.float())
            self.project.bias.copy_((-(mean @ proj)).float())
        self.register_buffer("centers", torch.as_tensor(np.asarray(numbers["centers"]), dtype=torch.float32).unsqueeze(0))
        self.inv_scale = float(1.0 / float(numbers["scale"]))
        self.cap = float(numbers.get("cap", CAP))
        self.feature_transform = str(numbers.get("transform", "none"))  # heads fitted before transforms existed: none
        if self.feature_transform not in TRANSFORMS:
            raise ValueError(f"unknown OOD feature transform {self.feature_transform!r}")

    def transform(self, f: torch.Tensor) -> torch.Tensor:
        """Elementwise ops every format has (Relu, Sqrt, Mul, ReduceSum, Div): no custom op to convert."""
        if self.feature_transform in ("sqrt", "sqrt_l2"):
            f = torch.sqrt(torch.relu(f))
        if self.feature_transform in ("l2", "sqrt_l2"):
            f = f / torch.sqrt((f * f).sum(dim=1, keepdim=True) + _EPS)
        return f

    def score(self, f: torch.Tensor) -> torch.Tensor:
        """r(f): N x 1, the clipped relative Mahalanobis distance."""
        u = self.project(self.transform(f)).unsqueeze(1)  # N x 1 x k
        d = u - self.centers  # N x C x k
        s = (d * d).sum(dim=2).min(dim=1, keepdim=True).values
        return torch.clamp(s * self.inv_scale, 0.0, self.cap)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.classify(f) - self.score(f)


def head_linear(model: nn.Module) -> nn.Linear:
    head = model.head
    if isinstance(head, OodHead):
        raise ValueError("the model already carries an OOD head")
    linear = head[-1] if isinstance(head, nn.Sequential) else head
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"the model's head ends in {type(linear).__name__}, not a linear layer")
    return linear


def attach(model: nn.Module, numbers: dict[str, Any]) -> nn.Module:
    """Swap ``model.head`` for an :class:`OodHead` built from ``numbers`` (in place; returned)."""
    model.head = OodHead(head_linear(model), numbers)
    model.eval()
    return model


@torch.inference_mode()
def pooled_features(model: nn.Module, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """``model.backbone`` outputs (the head's input) for a preprocessed NCHW batch, float64."""
    model.eval()
    out = [model.backbone(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))).double().numpy()
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out)


def fit_numbers(features: np.ndarray, y: np.ndarray, num_classes: int, dims: int = DEFAULT_DIMS,
                transform: str = DEFAULT_TRANSFORM) -> dict[str, Any]:
    """Class-conditional Gaussians with one shared covariance on the PCA-reduced within-class
    residuals (Ledoit-Wolf shrinkage), as a whitening projection plus class centres, of the
    ``transform``-ed pooled features."""
    from sklearn.covariance import LedoitWolf

    f = transform_features(features, transform)
    y = np.asarray(y, dtype=int)
    means = np.stack([f[y == c].mean(axis=0) for c in range(num_classes)])
    mu = f.mean(axis=0)
    resid = f - means[y]
    k = int(min(dims, f.shape[1], len(f) - num_classes))
    _, _, vt = np.linalg.svd(resid, full_matrices=False)
    pca = vt[:k].T
    cov = LedoitWolf().fit(resid @ pca).covariance_
    w, v = np.linalg.eigh(cov)
    proj = pca @ (v / np.sqrt(np.maximum(w, 1e-12)))
    centers = (means - mu) @ proj
    numbers: dict[str, Any] = {"mean": mu, "projection": proj, "centers": centers, "scale": 1.0, "cap": CAP,
                               "transform": "none"}
    raw = raw_scores(f, numbers)  # f is already transformed
    numbers["transform"] = transform
    numbers["scale"] = float(np.quantile(raw, 0.95))  # r = 1 at the training images' 95th percentile
    numbers["dims"] = k
    return numbers


def raw_scores(features: np.ndarray, numbers: dict[str, Any]) -> np.ndarray:
    """Unclipped min-class squared Mahalanobis distance of raw pooled features, numpy (for fitting and checks)."""
    u = (transform_features(features, numbers.get("transform", "none")) - numbers["mean"]) @ numbers["projection"]
    return (((u[:, None, :] - np.asarray(numbers["centers"])[None]) ** 2).sum(axis=2)).min(axis=1)


def to_payload(numbers: dict[str, Any]) -> dict[str, Any]:
    """Tensors and plain numbers only: checkpoints are read with ``weights_only=True``."""
    return {k: (torch.as_tensor(np.asarray(v), dtype=torch.float64) if isinstance(v, np.ndarray) else v) for k, v in numbers.items()}


def from_payload(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in entry.items()}
