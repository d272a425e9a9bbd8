"""``edgecxr calibrate``: fit temperature and conformal threshold, store them in the model.

The numbers go into the contract of the file given (a run's checkpoint by default),
so ``convert`` carries them into every export and the runner applies them on the
device. ``--stamp`` copies the same block into existing exports without
re-converting them (their own OOD/quality numbers are kept).
"""
from __future__ import annotations

import click

from edgecxr.decide.calibrate import describe_block, fit_decision
from edgecxr.decide.fit import DEFAULT_COVERAGE, DEFAULT_METHOD
from edgecxr.decide.ood_cuts import NOT_CXR_EXAMPLES, NOT_CXR_MARGIN


@click.command("calibrate")
@click.argument("model", type=click.Path())
@click.option("--coverage", default=DEFAULT_COVERAGE, show_default=True, type=float, help="Conformal coverage 1 - alpha of the prediction sets.")
@click.option("--method", default=DEFAULT_METHOD, show_default=True, type=click.Choice(["lac", "aps"]),
              help="Conformal score: lac (1 - p_y, smallest sets) or aps (cumulative mass).")
@click.option("--data", type=click.Path(file_okay=False), help="Dataset folder (default: the one the model was trained on).")
@click.option("--split-csv", type=click.Path(dir_okay=False), help="split.csv to use instead of the one recorded in the model.")
@click.option("--stamp", "stamps", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Also write the fitted block into this export (repeatable), e.g. runs/X/export/m_int8.tflite.")
@click.option("--per-class", is_flag=True,
              help="One conformal threshold per class (class-conditional coverage: each class, not only their mix, "
                   "keeps --coverage); needs at least 19 validation images per class at 0.95.")
@click.option("--disjoint", is_flag=True,
              help="Fit T and the conformal threshold on disjoint halves of the validation split (exact conformal "
                   "guarantee; needs a validation split large enough that each half holds misclassified images).")
@click.option("--ood-method", default="feature_mahalanobis", show_default=True,
              type=click.Choice(["feature_mahalanobis", "energy", "max_logit", "msp"]),
              help="Out-of-distribution score: a feature-space head carried in the logits, or a logit-only score "
                   "(measured per model: docs/results/decision.md 'Refusing what is not a chest X-ray').")
@click.option("--ood-features", default="sqrt_l2", show_default=True, type=click.Choice(["none", "sqrt", "l2", "sqrt_l2"]),
              help="feature_mahalanobis: transform of the pooled features before the distance (sqrt_l2: square root, "
                   "then unit length; measured best on both README models, docs/results/decision.md 'Refusing what is not a chest X-ray').")
@click.option("--intended-use", "intended_use", type=click.Path(dir_okay=False, exists=True),
              help="JSON file of DICOM header rules the model is for (device/intended_use.py); default: the model's "
                   "current block, else the CXR defaults (CR/DX/DR, chest, PA/AP, age 18-120, 8-16 bit MONOCHROME1/2).")
@click.option("--not-cxr-margin", default=NOT_CXR_MARGIN, show_default=True, type=click.FloatRange(1.0),
              help="'Not a chest X-ray' is refused above this many times the largest validation OOD score, so real "
                   "radiographs are (almost) never refused; between the validation 95th percentile and that cut an image is "
                   "referred as unfamiliar, never answered (docs/results/decision.md 'Two questions').")
@click.option("--not-cxr-examples", default=NOT_CXR_EXAMPLES, show_default=True, type=click.IntRange(0),
              help="feature_mahalanobis: drawn non-CXR images (photo-like scenes, noise, pages, patterns, scanner frames, "
                   "shapes; no download) the head's not-a-CXR discriminator learns from; 0: the distance alone "
                   "(docs/results/decision.md 'A score that has seen the other side').")
@click.option("--dry-run", is_flag=True, help="Fit and print, write nothing.")
@click.option("--threads", type=click.IntRange(1), help="Runtime threads.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def calibrate_command(model: str, coverage: float, method: str, data: str | None, split_csv: str | None,
                      stamps: tuple[str, ...], per_class: bool, disjoint: bool, ood_method: str, ood_features: str,
                      intended_use: str | None, not_cxr_margin: float, not_cxr_examples: int, dry_run: bool, threads: int | None, quiet: bool) -> None:
    """Fit temperature scaling and a split-conformal threshold on MODEL's validation split
    and store them in its contract (MODEL: a run folder, checkpoint, .onnx or .tflite).

    \b
    Examples:
      edgecxr calibrate runs/mnv2                         # into runs/mnv2/best.pt; later converts carry it
      edgecxr calibrate runs/mnv2 --stamp runs/mnv2/export/mobilenet_v2_int8.tflite
      edgecxr calibrate runs/mnv2/export/mobilenet_v2_int8.tflite   # fitted on the INT8 file's own outputs
    """
    from edgecxr.decide.store import read_contract, resolve_model, write_decision
    from edgecxr.models.runtime import open_model

    path = resolve_model(model)
    rules = intended_use_block(intended_use, read_contract(path).decision)  # a bad rules file fails before any fitting
    backend = open_model(path, threads)
    block = fit_decision(backend, data, split_csv, coverage, method, progress=not quiet, disjoint=disjoint, per_class=per_class)
    click.echo(describe_block(block))
    from edgecxr.decide.ood_fit import describe_refusals, fit_refusals, store_head

    refusals, head = fit_refusals(path, backend, data, split_csv, progress=not quiet, echo=click.echo, method=ood_method,
                                  transform=ood_features, margin=not_cxr_margin,
                                  not_cxr_examples=not_cxr_examples)
    block.update(refusals)
    click.echo(describe_refusals(refusals))
    block["intended_use"] = rules
    click.echo(f"intended use: {len(block['intended_use']['rules'])} DICOM header rules"
               + (f" from {intended_use}" if intended_use else " (kept, or the CXR defaults)"))
    from edgecxr.decide.ood_fit import attach_reference

    attach_reference(backend, block, data, split_csv, click.echo)  # what sitecheck and the drift watch compare a site with
    if dry_run:
        click.echo("dry run: nothing written")
        return
    if head is not None:  # the head first: a contract must never name an OOD method its model lacks
        store_head(path, head)
    write_decision(path, block)
    click.echo(f"wrote the decision block into {path}" + (" with its OOD head (convert again to carry it into exports)" if head else ""))
    for other in stamps:
        own = read_contract(other).decision or {}
        write_decision(other, {**own, **{k: block[k] for k in ("schema", "temperature", "calibration", "conformal", "intended_use")}})
        click.echo(f"wrote the decision block into {other}")


def intended_use_block(path: str | None, current: dict | None) -> dict:
    """The intended-use rules to store: from ``path``, else the model's own, else the CXR defaults."""
    import copy

    from edgecxr.device.intended_use import DEFAULT_BLOCK, IntendedUseError, load_block, validate_block

    try:
        if path:
            return load_block(path)
        own = (current or {}).get("intended_use")
        return validate_block(own) if own else copy.deepcopy(DEFAULT_BLOCK)
    except IntendedUseError as exc:
        raise click.UsageError(str(exc)) from exc
