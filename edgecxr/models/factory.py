"""A ready model: from an architecture name plus starting weights, or from a checkpoint.

The one factory every stage uses, so that where a model's weights come from is
decided in one place: the registry builds the architecture (``create_model``,
hub weights with ``pretrained``), ``edgecxr.models.weights`` reads a local file into it,
and ``edgecxr.models.checkpoint`` reads the checkpoint payload and its contract.
"""
from __future__ import annotations

from torch import nn

from edgecxr.device.contract import Contract
from edgecxr.errors import EdgecxrError
from edgecxr.models.checkpoint import contract_from_payload, load_checkpoint
from edgecxr.models.registry import CXRClassifier, create_model, get_config
from edgecxr.models.weights import load_weights_file


def build_model(name: str, num_classes: int, pretrained: bool = False, weights: str | None = None) -> CXRClassifier:
    """``name`` with a ``num_classes`` head, starting from ImageNet (``pretrained``) or a local file.

    ``weights`` is an edgecxr checkpoint (all matching tensors load, the head only if
    the class count matches), a plain state dict of the wrapped classifier, or, for
    MobileNetV2, an official TFLite MobileNetV2 whose ImageNet weights are
    dequantized (the offline stand-in for ``--pretrained``).
    """
    model = create_model(name, num_classes, pretrained=pretrained)
    if weights:
        load_weights_file(model, weights, arch=name, input_size=get_config(name).input_size)
    return model


def load_model(path: str, ood_head: bool = True) -> tuple[nn.Module, Contract]:
    """Rebuild the classifier from a checkpoint, in eval mode. ``ood_head=False``: the plain
    classifier, without the OOD head ``calibrate`` stored (what the head is fitted on)."""
    payload = load_checkpoint(path)
    contract = contract_from_payload(payload, path)
    model = create_model(contract.arch, contract.num_classes)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise EdgecxrError(f"{path}: weights do not fit {contract.arch} ({str(exc).splitlines()[0][:160]})") from exc
    if ood_head and payload.get("ood_head"):  # fitted by `edgecxr calibrate`: the OOD score rides in the logits (edgecxr/decide/ood_head.py)
        from edgecxr.decide.ood_head import attach, from_payload

        attach(model, from_payload(payload["ood_head"]))
    elif ood_head and ((contract.decision or {}).get("ood") or {}).get("method") == "feature_mahalanobis":
        # the runner would read -mean(logits) of a plain head (always 0) as the score and refuse nothing
        raise EdgecxrError(f"{path}: its contract names the feature_mahalanobis OOD score but the checkpoint carries no OOD head; "
                           f"run `edgecxr calibrate {path}` again to refit both")
    model.eval()
    return model, contract
