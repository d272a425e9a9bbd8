"""Fitting a model's decision block from its run's data: used by ``edgecxr calibrate``
and by ``convert`` (which fits one for its exports when the checkpoint has none)."""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np

from edgecxr.decide.fit import DEFAULT_COVERAGE, DEFAULT_METHOD
from edgecxr.decide.report import model_logits
from edgecxr.errors import EdgecxrError


def fit_decision(backend: Any, data: str | None, split_csv: str | None, coverage: float, method: str,
                 progress: bool = False, disjoint: bool = False, per_class: bool = False) -> dict[str, Any]:
    """The decision block for ``backend``'s model, fitted on its run's validation split
    (whole, or disjoint halves for T and the conformal threshold; see decision_fit)."""
    return fit_decision_and_logits(backend, data, split_csv, coverage, method, progress, disjoint, per_class)[0]


def fit_decision_and_logits(backend: Any, data: str | None, split_csv: str | None, coverage: float, method: str,
                            progress: bool = False, disjoint: bool = False,
                            per_class: bool = False) -> tuple[dict[str, Any], np.ndarray]:
    """:func:`fit_decision`, plus the logits of every validation image it read (each once),
    so a caller fitting more thresholds on the same split need not decode it again."""
    from edgecxr.data.imageset import load_images
    from edgecxr.decide.fit import decision_block, fit_conformal, fit_images, fit_temperature
    from edgecxr.device.decision import calibrated_probabilities
    from edgecxr.eval.evaluate import resolve_samples

    contract = backend.contract
    index = resolve_samples(contract, data, "val", split_csv, progress=progress)
    for_t, for_c = fit_images(index.of_split("val"), disjoint)
    imgs_t = load_images(index, for_t, contract.preprocess, "validation images for T", progress=progress)
    z_t = model_logits(backend, imgs_t.x)
    if for_c is for_t:
        imgs_c, z_c = imgs_t, z_t
    else:
        imgs_c = load_images(index, for_c, contract.preprocess, "validation images for conformal", progress=progress)
        z_c = model_logits(backend, imgs_c.x)
    t_fit = fit_temperature(z_t, imgs_t.y)
    conformal = fit_conformal(calibrated_probabilities(z_c, t_fit), imgs_c.y, coverage, method, per_class)
    provenance = {"split": "val", "split_csv": split_csv or contract.source.get("split_csv"),
                  "data_root": index.root, "fitted_with": f"{contract.format} {contract.precision}"}
    z_val = z_t if for_c is for_t else np.concatenate([z_t, z_c])
    return decision_block(t_fit, conformal, provenance, disjoint, contract.decision), z_val


def validation_logits(backend: Any, progress: bool = False) -> np.ndarray:
    """``backend``'s logits on every image of its run's validation split."""
    return model_logits(backend, validation_inputs(backend.contract, progress))


def validation_inputs(contract: Any, progress: bool = False) -> np.ndarray:
    """The model inputs of every image of the run's validation split, in the split's order."""
    from edgecxr.data.imageset import load_images
    from edgecxr.eval.evaluate import resolve_samples

    index = resolve_samples(contract, None, "val", None, progress=progress)
    return load_images(index, index.of_split("val"), contract.preprocess, "validation images", progress=progress).x


def describe_block(block: dict[str, Any]) -> str:
    cal, conf = block["calibration"], block["conformal"]
    bound = " (at the search bound: too few validation errors to fit T)" if cal.get("at_bound") else ""
    if cal.get("not_identifiable"):
        bound = " (no misclassified validation image: T cannot be fitted, left at 1)"
    return (f"temperature {block['temperature']:.4f}{bound} on {cal['n']} validation images ({cal['errors']} misclassified): "
            f"NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f}, ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}\n"
            f"conformal {conf['method']} at coverage {conf['coverage']}: qhat {conf['qhat']:.6f} from {conf['n']} validation images "
            f"({conf['images']})" + (f"; per class {[round(q, 6) for q in conf['qhat_per_class']]}" if conf.get("qhat_per_class") else ""))


def ensure_decision(ckpt: str, contract: Any, threads: int | None, progress: bool, echo: Any) -> Any:
    """``contract`` with a temperature and conformal threshold for convert's exports.

    A checkpoint calibrated with ``edgecxr calibrate`` keeps its block. Otherwise the
    block is fitted on the run's validation split (default coverage and method) when the
    split and images are here, and stored in the exports only: convert never rewrites
    its input checkpoint (its sha256 is in every report). Without the data, the exports
    get no block and the runner falls back to a plain softmax and top-1 label.
    """
    if contract.decision and "temperature" in contract.decision:
        echo(f"decision: temperature {contract.decision['temperature']:.4f} and conformal sets from the checkpoint")
        return contract
    split_csv, root = contract.source.get("split_csv"), contract.source.get("data_root")
    if not (split_csv and os.path.exists(split_csv) and root and os.path.isdir(root)):
        echo("decision: none in the checkpoint and no validation split here; exports give plain softmax "
             "(run `edgecxr calibrate CKPT --data DIR --split-csv CSV`, then convert again)")
        return contract
    from edgecxr.models.runtime import TorchBackend

    try:
        backend = TorchBackend(ckpt, threads)
        backend.contract = contract  # with convert's --split-csv, if given
        block = fit_decision(backend, root, split_csv, DEFAULT_COVERAGE, DEFAULT_METHOD, progress)
    except EdgecxrError as exc:
        echo(f"decision: not fitted ({exc}); exports give plain softmax")
        return contract
    echo("decision (fitted for these exports; `edgecxr calibrate` stores it in the checkpoint):\n  "
         + describe_block(block).replace("\n", "\n  ")
         + "\n  no OOD refusal: the feature head changes the graph and is fitted on the training images, so it is "
           f"`edgecxr calibrate {ckpt}`'s job; run it, then convert again")
    return replace(contract, decision=block)
