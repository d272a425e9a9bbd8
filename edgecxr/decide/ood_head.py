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

A distance cannot tell a photo from an odd radiograph: a quarter of the photos and other
medical images lie closer to the CXRs than the farthest validation CXR (docs/results/decision.md
"Two questions"). So where ``calibrate`` fitted one, the head also carries a discriminative
score, a logistic regression on the same transformed features, CXRs against drawn non-CXR
images (``negatives.py``; outlier exposure), folded into one affine map ``t`` with
``t = R`` at the largest validation logit (``R``: the largest validation ``r``) and ``t = 0`` at
their median. The carried score is ``clip(max(r, t), 0, CAP)``: on validation CXRs ``t <= R``, so
the not-a-CXR cut (the largest validation score) stays ``R`` and an image is refused when
either score passes it, while the unfamiliar cut (the 95% quantile) now also refers the CXRs
the discriminator finds least CXR-like. Still one scalar in the logits: no format changes.
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
NOT_CXR_C = 3.0  # logistic regression's inverse L2 strength; measured: docs/results/decision.md "A score that has seen the other side"
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
        self.not_cxr: nn.Linear | None = None
        if numbers.get("not_cxr_weight") is not None:  # heads fitted before the discriminator: distance alone
            wv = torch.as_tensor(np.asarray(numbers["not_cxr_weight"]), dtype=torch.float64).reshape(1, -1)
            self.not_cxr = nn.Linear(wv.shape[1], 1)
            with torch.no_grad():
                self.not_cxr.weight.copy_(wv.float())
                self.not_cxr.bias.fill_(float(numbers["not_cxr_bias"]))

    def transform(self, f: torch.Tensor) -> torch.Tensor:
        """Elementwise ops every format has (Relu, Sqrt, Mul, ReduceSum, Div): no custom op to convert."""
        if self.feature_transform in ("sqrt", "sqrt_l2"):
            f = torch.sqrt(torch.relu(f))
        if self.feature_transform in ("l2", "sqrt_l2"):
            f = f / torch.sqrt((f * f).sum(dim=1, keepdim=True) + _EPS)
        return f

    def score(self, f: torch.Tensor) -> torch.Tensor:
        """N x 1: the scaled Mahalanobis distance r, or max(r, t) with the discriminator, clipped to [0, cap]."""
        g = self.transform(f)
        u = self.project(g).unsqueeze(1)  # N x 1 x k
        d = u - self.centers  # N x C x k
        s = (d * d).sum(dim=2).min(dim=1, keepdim=True).values * self.inv_scale
        if self.not_cxr is not None:
            s = torch.maximum(s, self.not_cxr(g))
        return torch.clamp(s, 0.0, self.cap)

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


def carried_scores(features: np.ndarray, numbers: dict[str, Any]) -> np.ndarray:
    """The numpy twin of :meth:`OodHead.score` (fitting and checks): ``clip(max(r, t), 0, cap)``."""
    s = raw_scores(features, numbers) / float(numbers["scale"])
    if numbers.get("not_cxr_weight") is not None:
        g = transform_features(features, numbers.get("transform", "none"))
        s = np.maximum(s, g @ np.asarray(numbers["not_cxr_weight"], dtype=np.float64) + float(numbers["not_cxr_bias"]))
    return np.clip(s, 0.0, float(numbers.get("cap", CAP)))


def fit_not_cxr(numbers: dict[str, Any], train_features: np.ndarray, negative_features: np.ndarray, val_features: np.ndarray,
                c: float = NOT_CXR_C) -> dict[str, Any]:
    """``numbers`` with the discriminator folded in: a class-balanced logistic regression, training
    CXRs against ``negative_features`` (drawn non-CXR images), mapped so that the largest validation
    logit lands on the largest validation distance ``R`` and their median on 0 (module docstring).
    The validation CXRs thus keep the not-a-CXR cut where the distance alone put it."""
    from sklearn.linear_model import LogisticRegression

    t = numbers.get("transform", "none")
    pos, neg = transform_features(train_features, t), transform_features(negative_features, t)
    if not len(pos) or not len(neg):
        raise ValueError("the not-a-CXR discriminator needs training CXRs and drawn negatives")
    x = np.concatenate([pos, neg])
    y = np.concatenate([np.zeros(len(pos)), np.ones(len(neg))])
    clf = LogisticRegression(C=c, max_iter=5000).fit(x, y, sample_weight=np.where(y == 1, len(pos) / len(neg), 1.0))
    w, b = clf.coef_[0].astype(np.float64), float(clf.intercept_[0])
    plain = {k: v for k, v in numbers.items() if k not in ("not_cxr_weight", "not_cxr_bias")}
    r_val = carried_scores(val_features, plain)
    z_val = transform_features(val_features, t) @ w + b
    top, z_top, z_mid = float(r_val.max()), float(z_val.max()), float(np.median(z_val))
    if z_top - z_mid < 1e-3 * max(1.0, abs(z_top)) or top <= 0.0:  # the slope would amplify float32 rounding in the graph
        raise ValueError("the not-a-CXR discriminator gives the validation CXRs (almost) the same score: too few validation "
                         "images, or a model whose features do not vary")
    slope = top / (z_top - z_mid)
    return {**plain, "not_cxr_weight": w * slope, "not_cxr_bias": (b - z_top) * slope + top,
            "not_cxr": {"method": "logistic_regression", "C": float(c), "n_cxr": int(len(pos)), "n_drawn": int(len(neg)),
                        "val_max_logit": z_top, "val_median_logit": z_mid, "val_max_distance": top,
                        "train_drawn_refused": float(np.mean(clf.decision_function(neg) > z_top))}}


def to_payload(numbers: dict[str, Any]) -> dict[str, Any]:
    """Tensors and plain numbers only: checkpoints are read with ``weights_only=True``."""
    return {k: (torch.as_tensor(np.asarray(v), dtype=torch.float64) if isinstance(v, np.ndarray) else v) for k, v in numbers.items()}


def from_payload(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in entry.items()}
