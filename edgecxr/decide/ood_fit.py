"""Fitting the contract's ``ood`` and ``quality`` blocks (applied on the device by ``device/ood.py``).

The out-of-distribution score is fitted on training images (per-class means and a
shared covariance of the model's logits) and thresholded on validation images at a
chosen true-positive rate (95%: at most about 1 in 20 real chest X-rays is refused).
The threshold is the ``ceil((n + 1) * tpr)``-th smallest validation score, the
split-conformal quantile, so a fresh CXR from the same distribution passes with
probability at least ``tpr``; the test split is never looked at.

The measurements behind the choice of method (logit-space Mahalanobis against
energy, max-softmax and feature-space scores) are in docs/results/decision.md "Refusing what is not a chest X-ray".
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from edgecxr.decide.ood_cuts import DEFAULT_TPR, NOT_CXR_MARGIN, carried_over_cut, describe_cuts, fit_cuts, threshold_at_tpr
from edgecxr.decide.transfer import MIN_AGREEMENT
from edgecxr.device.ood import OOD_METHODS, QUALITY_DEFAULTS, ood_scores, quality_problem
from edgecxr.errors import EdgecxrError

DEFAULT_METHOD = "logit_mahalanobis"
DEFAULT_FIT_IMAGES = 900  # training images the class means and covariance are fitted on (stratified)


def fit_logit_gaussians(logits: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Per-class means and the inverse of the shared (pooled within-class) covariance."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=int)
    missing = [c for c in range(num_classes) if not np.any(y == c)]
    if missing:
        raise EdgecxrError(f"the OOD fit needs training images of every class; none of class index {missing}")
    means = np.stack([z[y == c].mean(axis=0) for c in range(num_classes)])
    resid = z - means[y]
    cov = resid.T @ resid / max(1, len(z) - num_classes)
    cov += np.eye(cov.shape[0]) * 1e-6 * max(float(np.trace(cov)) / cov.shape[0], 1e-12)  # never singular
    return {"means": means.tolist(), "precision": np.linalg.inv(cov).tolist()}


def fit_ood(train_logits: np.ndarray, train_y: np.ndarray, val_logits: np.ndarray, num_classes: int,
            method: str = DEFAULT_METHOD, tpr: float = DEFAULT_TPR) -> dict[str, Any]:
    """The ``ood`` block: the method's numbers from training logits, the threshold from validation logits."""
    if method not in OOD_METHODS:
        raise EdgecxrError(f"--ood-method {method!r}: choose one of {', '.join(OOD_METHODS)}")
    spec: dict[str, Any] = {"method": method}
    if method == "logit_mahalanobis":
        spec.update(fit_logit_gaussians(train_logits, train_y, num_classes))
    val_scores = ood_scores(val_logits, {**spec, "threshold": 0.0})
    spec["threshold"] = threshold_at_tpr(val_scores, tpr)
    spec.update({"tpr": float(tpr), "n_fit": int(len(train_logits)), "n_threshold": int(len(val_logits)),
                 "val_refused": float(np.mean(val_scores > spec["threshold"]))})
    return spec


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """P(score of an OOD image > score of an in-distribution one), ties counted half (Mann-Whitney)."""
    a = np.asarray(in_scores, dtype=np.float64)
    b = np.asarray(out_scores, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    allv = np.concatenate([a, b])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    rb = ranks[len(a):].sum()
    return float((rb - len(b) * (len(b) + 1) / 2.0) / (len(a) * len(b)))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = DEFAULT_TPR) -> float:
    """Share of OOD images accepted at the threshold that accepts ``tpr`` of the given in-distribution images."""
    t = float(np.quantile(np.asarray(in_scores, dtype=np.float64), tpr))
    return float(np.mean(np.asarray(out_scores) <= t))


def quality_block(grays: list[np.ndarray] | None = None) -> dict[str, Any]:
    """The ``quality`` block: the fixed thresholds, with how many of ``grays`` (real CXRs,
    as decoded) each would have refused, so a dataset the defaults do not fit is noticed."""
    problems = []
    for g in grays or []:
        p = quality_problem(g, QUALITY_DEFAULTS)
        problems.append(p[0] if p else "")
    return quality_block_counts(problems)


# --- fitting a model's refusals (``edgecxr calibrate``) ------------------------------------------
def _batches(index: Any, samples: list[Any], spec: Any, batch: int = 128):
    """(x, y, raw quality problems) in slices: 2400 preprocessed images at once would not fit a Pi-sized budget."""
    import os

    from edgecxr.device.image_io import ImageError, load_gray
    from edgecxr.device.preprocess import normalize, prepare_gray

    for i in range(0, len(samples), batch):
        xs, ys, problems = [], [], []
        for s in samples[i : i + batch]:
            try:
                gray = load_gray(os.path.join(index.root, s.file))
            except ImageError:
                continue
            p = quality_problem(gray, QUALITY_DEFAULTS)
            problems.append(p[0] if p else "")
            xs.append(normalize(prepare_gray(gray, spec), spec))
            ys.append(index.classes.index(s.label))
        if xs:
            yield np.stack(xs).astype(np.float32), np.asarray(ys, dtype=int), problems


def _refuse_logit_score_on_head(path: str, backend: Any, method: str) -> None:
    """A logit-only score (energy, max-logit, MSP) cannot be read from a model whose head
    adds the OOD score to its logits: raise instead of fitting a meaningless threshold."""
    from edgecxr.decide import ood_head

    model = getattr(backend, "model", None)
    if model is not None and isinstance(model.head, ood_head.OodHead):
        raise EdgecxrError(f"{path} carries an OOD head: its logits are shifted, so --ood-method {method} cannot be read from them")


def _fit_feature_head(path: str, backend: Any, index: Any, fit_images: int | None, transform: str | None, progress: bool,
                      echo: Any, not_cxr_examples: int = 0) -> tuple[dict[str, Any], int, list[str]]:
    """Fit the feature-space head of the checkpoint at ``path`` on its training images (all,
    or ``fit_images`` stratified) and attach it to ``backend``'s model, so the threshold is
    then set through the model the device will run. Returns the head's numbers, the
    images it was fitted on and their raw quality problems. A checkpoint that already
    carries a head is refitted from its plain head. ``not_cxr_examples`` drawn non-CXR images
    (0: none) teach the head's not-a-CXR discriminator (``ood_head.fit_not_cxr``)."""
    from edgecxr.data.folders import stratified_subset
    from edgecxr.decide import ood_head
    from edgecxr.models.factory import load_model
    from edgecxr.progress import progress as progress_bar

    contract = backend.contract
    train = index.of_split("train")
    if fit_images:
        train = stratified_subset(train, fit_images)
    model, _ = load_model(path, ood_head=False)  # a head stored by an earlier calibrate is refitted from the plain one
    feats, ys, fit_problems = [], [], []
    for x, y, probs in progress_bar(_batches(index, train, contract.preprocess), desc="OOD fit: training features",
                                    unit="batch", enabled=progress):
        feats.append(ood_head.pooled_features(model, x))
        ys.append(y)
        fit_problems += probs
    if transform is not None and transform not in ood_head.TRANSFORMS:
        raise EdgecxrError(f"--ood-features {transform!r}: choose one of {', '.join(ood_head.TRANSFORMS)}")
    train_features = np.concatenate(feats)
    numbers = ood_head.fit_numbers(train_features, np.concatenate(ys), contract.num_classes,
                                   transform=transform or ood_head.DEFAULT_TRANSFORM)
    n_fit = sum(len(y) for y in ys)
    echo(f"OOD head: Mahalanobis on {numbers['dims']} PCA dims of the {numbers['transform']} pooled features, "
         f"{n_fit} training images")
    if not_cxr_examples:
        numbers = _fit_discriminator(model, numbers, train_features, index, contract.preprocess, not_cxr_examples, progress, echo)
    backend.model = ood_head.attach(model, numbers)
    return numbers, n_fit, fit_problems


def _fit_discriminator(model: Any, numbers: dict[str, Any], train_features: np.ndarray, index: Any, spec: Any, count: int,
                       progress: bool, echo: Any) -> dict[str, Any]:
    """The head's numbers with the not-a-CXR discriminator (``ood_head.fit_not_cxr``) fitted on
    :func:`discriminator_examples` and the training CXRs, mapped on the validation CXRs."""
    from edgecxr.decide import negatives, ood_head

    neg, degraded = discriminator_examples(model, index, spec, count, progress)
    val = [ood_head.pooled_features(model, x) for x, _y, _p in _batches(index, index.of_split("val"), spec)]
    if not val:
        raise EdgecxrError("the not-a-CXR discriminator needs validation images; none could be read")
    try:
        numbers = ood_head.fit_not_cxr(numbers, np.concatenate([train_features, degraded]), neg, np.concatenate(val))
    except ValueError as exc:  # a model whose features do not vary: the distance alone still refuses what it can
        echo(f"not-a-CXR discriminator skipped ({exc}); the distance alone decides")
        return numbers
    d = numbers["not_cxr"]
    d["n_degraded"] = int(len(degraded))
    echo(f"not-a-CXR discriminator: logistic regression (C={d['C']:g}) of {d['n_cxr']} training CXRs ({len(degraded)} of them "
         f"degraded copies) against {d['n_drawn']} drawn non-CXR images ({', '.join(negatives.FAMILIES)}); refuses "
         f"{d['train_drawn_refused']:.1%} of those drawn images at the largest validation CXR's score")
    return numbers


def gray_features(model: Any, grays: list[np.ndarray], spec: Any, desc: str = "", progress: bool = False) -> np.ndarray:
    """Pooled features (``ood_head.pooled_features``) of uint8 greyscale images, prepared as the device does, 64 at a time."""
    from edgecxr.decide.ood_head import pooled_features
    from edgecxr.device.preprocess import normalize, prepare_gray
    from edgecxr.progress import progress as progress_bar

    return np.concatenate([
        pooled_features(model, np.stack([normalize(prepare_gray(g, spec), spec) for g in grays[i : i + 64]]).astype(np.float32))
        for i in progress_bar(range(0, len(grays), 64), desc=desc, unit="batch", enabled=progress)])


def discriminator_examples(model: Any, index: Any, spec: Any, count: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Features of what the discriminator learns from besides the training CXRs: ``count`` drawn non-CXR
    images (``negatives.py``) and degraded copies of ``count`` training CXRs (stratified), so both sides
    see the same blur, noise, crops and JPEG. Unreadable training files are skipped."""
    import os

    from edgecxr.data.folders import stratified_subset
    from edgecxr.decide import negatives
    from edgecxr.device.image_io import ImageError, load_gray

    drawn = gray_features(model, negatives.drawn_negatives(count), spec, "OOD fit: drawn non-CXR images", progress)
    grays = []
    for s in stratified_subset(index.of_split("train"), count):
        try:
            grays.append(load_gray(os.path.join(index.root, s.file)))
        except ImageError:
            continue
    degraded = (gray_features(model, negatives.degraded_copies(grays), spec, "OOD fit: degraded training CXRs", progress)
                if grays else drawn[:0])
    return drawn, degraded


def _threshold_on_val(backend: Any, index: Any, method: str, tpr: float) -> tuple[dict[str, Any], list[str]]:
    """The ``ood`` spec thresholded at ``tpr`` on the validation images' logits through
    ``backend`` (the file the device runs, INT8 included), and those images' raw quality problems."""
    from edgecxr.decide.report import model_logits

    contract = backend.contract
    zs, val_problems = [], []
    for x, _y, probs in _batches(index, index.of_split("val"), contract.preprocess):
        zs.append(model_logits(backend, x))
        val_problems += probs
    z_val = np.concatenate(zs)
    spec = fit_ood(np.zeros((0, contract.num_classes)), np.zeros(0, int), z_val, contract.num_classes, method, tpr)
    return spec, val_problems, z_val


def two_cuts(spec: dict[str, Any], z_val: np.ndarray, margin: float | None = None) -> dict[str, Any]:
    """``spec`` (one cut at its TPR) split into the not-a-CXR refusal and the unfamiliar referral
    (``ood_cuts.fit_cuts``), provenance kept on both."""
    cuts = fit_cuts(spec, z_val, float(spec.get("tpr", DEFAULT_TPR)), NOT_CXR_MARGIN if margin is None else margin)
    cut_keys = ("tpr", "threshold", "val_refused", "val_referred", "rule", "margin", "val_max", "n_threshold")
    keep = {k: v for k, v in spec.items() if k not in cut_keys}  # provenance only: each block gets its own cut's numbers
    return {"ood": {**keep, **cuts["ood"]}, "unfamiliar": {**keep, **cuts["unfamiliar"]}}


def fit_refusals(path: str, backend: Any, data: str | None = None, split_csv: str | None = None, tpr: float = DEFAULT_TPR,
                 fit_images: int | None = None, progress: bool = False, echo: Any = print,
                 method: str = "feature_mahalanobis", transform: str | None = None,
                 margin: float | None = None, not_cxr_examples: int = 0) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``({"ood": ..., "quality": ...}, head numbers or None)`` for the model at ``path``.

    A checkpoint: the feature-space head is fitted on its training images (all, or
    ``fit_images`` stratified), attached to ``backend``'s model, and thresholded on the
    validation images through that model; the caller stores the numbers in the checkpoint.
    ``transform``: the head's feature transform (``ood_head.TRANSFORMS``; None: the default).
    ``not_cxr_examples``: drawn non-CXR images for the head's discriminator (0: the distance alone).
    An export converted from such a checkpoint: only the threshold is refitted, on its
    own outputs (INT8 ones included). Any other export: no OOD block (the logit-only
    scores are too weak to ship, docs/results/decision.md "Refusing what is not a chest X-ray"); the quality block is always given.
    """
    from edgecxr.eval.evaluate import resolve_samples
    from edgecxr.models.runtime import is_checkpoint

    contract = backend.contract
    index = resolve_samples(contract, data, "val", split_csv, progress=False)
    own = (contract.decision or {}).get("ood") or {}
    numbers = None
    n_fit = 0
    fit_problems: list[str] = []
    if method in ("energy", "max_logit", "msp"):  # logit-only: threshold on the validation logits, nothing in the graph
        _refuse_logit_score_on_head(path, backend, method)
    elif method != "feature_mahalanobis":
        raise EdgecxrError(f"--ood-method {method!r}: choose feature_mahalanobis, energy, max_logit or msp")
    elif is_checkpoint(path):
        from edgecxr.decide import ood_head

        numbers, n_fit, fit_problems = _fit_feature_head(path, backend, index, fit_images, transform, progress, echo,
                                                         not_cxr_examples)
        method = ood_head.METHOD
    elif own.get("method") == "feature_mahalanobis":
        method = own["method"]
    elif own.get("method") not in (None, "feature_mahalanobis"):
        method = own["method"]  # an export whose model was fitted with a logit-only score: refit its threshold
    else:
        echo(f"{path}: no OOD head in this file (it was converted from a checkpoint without one); only the quality checks "
             "are stored. Run `edgecxr calibrate` on the checkpoint and convert again to refuse non-CXR images")
        return {"quality": quality_block_counts(fit_problems)}, None
    spec, val_problems, z_val = _threshold_on_val(backend, index, method, tpr)
    spec.update({"n_fit": n_fit if numbers is not None else int(own.get("n_fit", 0)),
                 "fitted_with": f"{contract.format} {contract.precision}", "split": "val", "data_root": index.root})
    if numbers is not None:
        spec.update({"dims": int(numbers["dims"]), "scale": float(numbers["scale"]), "cap": float(numbers["cap"]),
                     "features": numbers["transform"]})
        if numbers.get("not_cxr"):
            spec["not_cxr"] = dict(numbers["not_cxr"])
    else:
        spec.update({k: own[k] for k in ("dims", "scale", "cap", "features", "not_cxr") if k in own})
    return {**two_cuts(spec, z_val, margin), "quality": quality_block_counts(fit_problems + val_problems)}, numbers


def refit_decision(backend: Any, host_cpu: dict[str, Any] | None = None,
                   reference: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Refit the temperature, conformal threshold and OOD thresholds of the file open in
    ``backend`` (with the contract it will carry) on its own validation outputs; returns the
    new decision block and the before/after numbers, or None when the contract has no
    decision block, its validation images are not here, or it says ``host_cpu`` computes it
    wrong (its outputs here are not the device's). Nothing is written: convert writes the
    contract once, after verification.

    ``reference`` (the checkpoint's logits for given model inputs): T and the conformal
    thresholds are carried over from the checkpoint by a paired estimate on the same
    validation images (``transfer.transfer_decision``), far steadier than a fresh fit of T and
    a sparse tail quantile; a file that disagrees with its checkpoint on more than 5% of them
    gets them refitted afresh, as without ``reference``. The two OOD cuts are always the
    file's own quantiles (dense scores: steady, and they keep the checkpoint's shares).

    A rounded file is a slightly different model. Measured (docs/results/decision.md "Calibrated
    probabilities" and "Refusing what is not a chest X-ray"): with its FP32 model's
    numbers, the QAT MobileNetV2 INT8 TFLite refused 6.3% of the test CXRs (2.7% through
    FP32), and the QAT EfficientNet-Lite0 INT8 TFLite, more accurate than its float
    model, got ECE 0.030 after T and 0.977 coverage at 0.95. Every number is refitted the
    way the checkpoint's was (same coverage, score, per-class and disjoint choices, same
    TPR, same validation split), through the file the device will run; the OOD head and
    its scale stay those of the checkpoint, only the cut moves. A temperature refit that
    lands on its search bound or has no error to fit (a small validation split) is not
    taken: the checkpoint's T and qhat stay.
    """
    from edgecxr.decide.calibrate import validation_logits
    from edgecxr.device.cpufeatures import unmet_requirement

    contract = backend.contract
    block = dict(contract.decision or {})
    if "temperature" not in block and "ood" not in block:
        return None
    if host_cpu is not None and unmet_requirement(contract.target, host_cpu, backend.runtime):
        return None
    out: dict[str, Any] = {}
    try:
        z_val = None  # the validation logits, read once for every number refitted here
        carried = _carried_over(backend, block, reference) if reference is not None else None
        if carried is not None:
            block, numbers, z_val = carried
            out.update(numbers)
        elif "temperature" in block:
            if reference is not None:
                out["transfer_refused"] = (f"the file's answers differ from the checkpoint's on over {1 - MIN_AGREEMENT:.0%} "
                                           "of validation images")
            block, z_val = _fresh_temperature(backend, block, out)
        own = block.get("ood") or {}
        if own.get("method") in ("feature_mahalanobis", "energy", "max_logit", "msp"):  # not: fitted on training logits
            if z_val is None:
                z_val = validation_logits(backend)
            block.update(_refit_cuts(block, z_val, contract, out))
        if "ood" in block:  # refitted OOD cut: the drift watch's and sitecheck's reference under it, from this file
            attach_reference(backend, block)
    except EdgecxrError:  # no split or images here: the checkpoint's numbers stay
        return None
    return block, out


def _fresh_temperature(backend: Any, block: dict[str, Any], out: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    """T and qhat refitted on the file's own validation outputs, the way the checkpoint's were;
    a T on its search bound or with no error to fit is not taken (the checkpoint's stay)."""
    from edgecxr.decide.calibrate import fit_decision_and_logits

    conf = block.get("conformal") or {}
    new, z_val = fit_decision_and_logits(backend, None, None, float(conf.get("coverage", 0.95)), str(conf.get("method", "lac")),
                                         disjoint="disjoint" in str(conf.get("images", "")), per_class="qhat_per_class" in conf)
    cal = new.get("calibration") or {}
    if cal.get("at_bound") or cal.get("not_identifiable"):  # too few validation errors: the checkpoint's fit stands
        out["kept_checkpoint_temperature"] = "at the search bound" if cal.get("at_bound") else "no misclassified image"
        return block, z_val
    out.update({"temperature_from_checkpoint": float(block["temperature"]), "temperature": float(new["temperature"]),
                "qhat_from_checkpoint": conf.get("qhat"), "qhat": new["conformal"].get("qhat")})
    return new, z_val


def _carried_over(backend: Any, block: dict[str, Any], reference: Callable[[np.ndarray], np.ndarray]
                  ) -> tuple[dict[str, Any], dict[str, Any], np.ndarray] | None:
    """(the block with T carried over, its numbers, the file's validation logits), or None when
    the file is not its checkpoint plus rounding or the block has no T to carry."""
    from edgecxr.decide.calibrate import validation_inputs
    from edgecxr.decide.report import model_logits
    from edgecxr.decide.transfer import transfer_decision

    if "temperature" not in block:
        return None
    contract = backend.contract
    x = validation_inputs(contract)
    z_own = model_logits(backend, x)
    carried = transfer_decision(block, reference(x), z_own, f"{contract.format} {contract.precision}")
    return None if carried is None else (carried[0], carried[1], z_own)


def attach_reference(backend: Any, block: dict[str, Any], data: str | None = None, split_csv: str | None = None,
                     echo: Any = None) -> None:
    """Store in ``block`` the compact validation reference (``sitecheck_reference``: validation OOD scores
    under ``block``'s own OOD score, confusion and training counts) that ``edgecxr sitecheck`` and the
    device's drift watch compare a site with, so a bare artifact carries it. One more pass over the
    validation images through ``backend``; without them here the block is left as it is."""
    from dataclasses import replace

    from edgecxr.site.reference import resolve_reference

    old = backend.contract
    backend.contract = replace(old, decision=block)  # the scores of the OOD method this block refuses by
    try:
        ref = resolve_reference(backend, data, split_csv)
        block["reference"] = ref.compact(f"{old.format} {old.precision}", block)
    except EdgecxrError as exc:
        if echo:
            echo(f"no validation reference stored ({exc})")
    finally:
        backend.contract = old


def _refit_cuts(block: dict[str, Any], z_val: np.ndarray, contract: Any, out: dict[str, Any]) -> dict[str, Any]:
    """The file's own cuts on its validation outputs, by the rule its checkpoint's were fitted with:
    two cuts (not a CXR, unfamiliar) where the block has both, else the one cut at its TPR (older models)."""
    own, unfamiliar = block["ood"], block.get("unfamiliar")
    fitted = {"fitted_with": f"{contract.format} {contract.precision}"}
    k = contract.num_classes
    if unfamiliar and "margin" in own:
        spec = {**own, "tpr": float(unfamiliar.get("tpr", DEFAULT_TPR))}
        new = two_cuts(spec, z_val, float(own["margin"]))
        ref = float(unfamiliar["threshold"])
        scale = float(new["unfamiliar"]["threshold"]) / ref if ref > 0 else 1.0
        new["ood"] = carried_over_cut(new["ood"], float(own["threshold"]), scale)
        new = {key: {**v, **fitted} for key, v in new.items()}
        out.update({"ood_threshold_from_checkpoint": float(own["threshold"]), "ood_threshold": new["ood"]["threshold"],
                    "unfamiliar_threshold_from_checkpoint": float(unfamiliar["threshold"]),
                    "unfamiliar_threshold": new["unfamiliar"]["threshold"], "unfamiliar_val_referred": new["unfamiliar"]["val_referred"],
                    "ood_val_refused": new["ood"]["val_refused"]})
        return new
    spec = fit_ood(np.zeros((0, k)), np.zeros(0, int), z_val, k, own["method"], float(own.get("tpr", DEFAULT_TPR)))
    new_ood = {**own, **{key: spec[key] for key in ("threshold", "n_threshold", "val_refused")}, **fitted}
    out.update({"ood_threshold_from_checkpoint": float(own["threshold"]), "ood_threshold": float(new_ood["threshold"]),
                "ood_val_refused": float(new_ood["val_refused"])})
    return {"ood": new_ood}


def quality_block_counts(problems: list[str]) -> dict[str, Any]:
    """The quality block with how many of the fit's real CXRs each check refused."""
    block: dict[str, Any] = dict(QUALITY_DEFAULTS)
    if problems:
        refused: dict[str, int] = {}
        for p in problems:
            if p:
                refused[p] = refused.get(p, 0) + 1
        block["checked_on"] = {"images": len(problems), "refused": refused}
    return block


def describe_refusals(blocks: dict[str, Any]) -> str:
    q = blocks["quality"].get("checked_on")
    lines = []
    if "unfamiliar" in blocks:
        lines += describe_cuts(blocks)
    elif "ood" in blocks:
        o = blocks["ood"]
        lines.append(f"OOD refusal {o['method']}: threshold {o['threshold']:.4f} at {o['tpr']:.0%} TPR on {o['n_threshold']} "
                     f"validation images ({o['val_refused']:.1%} of them refused)")
    if q:
        lines.append(f"quality checks: {q['images']} real CXRs checked, refused {q['refused'] or 'none'}")
    return "\n".join(lines)


def store_head(path: str, numbers: dict[str, Any]) -> None:
    """Put the OOD head's numbers into the checkpoint at ``path`` (atomically); ``load_model`` attaches them."""
    import torch

    from edgecxr.decide.ood_head import to_payload
    from edgecxr.device.atomic import atomic_path
    from edgecxr.models.checkpoint import load_checkpoint

    payload = load_checkpoint(path)
    payload["ood_head"] = to_payload(numbers)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
