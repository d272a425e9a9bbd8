"""``edgecxr eval`` and ``edgecxr models``."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import numpy as np


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(file_okay=False), help="Dataset folder (default: the one the model was trained on).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val", "train", "holdout", "all"]),
              help="Which images; 'holdout' for the sources the run held out (train --holdout), 'all' for a folder that was never split.")
@click.option("--split-csv", type=click.Path(dir_okay=False), help="split.csv to use instead of the one recorded in the model.")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for eval.json and the plots (default: next to MODEL, eval_<name>_<split>/).")
@click.option("--threads", type=click.IntRange(1), help="Runtime threads.")
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(0), help="Bootstrap resamples for the 95% CIs.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_command(model: str, data: str | None, split: str, split_csv: str | None, out: str | None, threads: int | None, bootstrap: int, quiet: bool) -> None:
    """Evaluate MODEL (.pt checkpoint, .onnx or .tflite) with 95% bootstrap CIs.

    \b
    Examples:
      edgecxr eval runs/mnv2/best.pt                      # the run's own test split
      edgecxr eval runs/mnv2/export/mobilenet_v2_int8.tflite
      edgecxr eval runs/mnv2/best.pt --data ../shared/data/tbcxr --split all
      edgecxr eval runs/loso_tbcxr/best.pt --split holdout  # the source the run never saw

    Writes eval.json (accuracy, macro_f1, auc_macro, per_class, confusion_matrix,
    n_images; calibration before/after the model's temperature; conformal coverage
    and set sizes per class), confusion_matrix.png, roc.png and reliability.png.
    """
    from edgecxr.data.imageset import load_images
    from edgecxr.device.atomic import write_json
    from edgecxr.device.cpufeatures import cpu_description
    from edgecxr.device.selftest import run_selftest, selftest_line
    from edgecxr.eval.evaluate import resolve_samples
    from edgecxr.models.runtime import open_model

    backend = open_model(model, threads)
    contract = backend.contract
    selftest = run_selftest(backend) if contract.format != "pytorch" else None
    if selftest is not None:
        click.echo(selftest_line(selftest), err=True)
    index = resolve_samples(contract, data, split, split_csv, progress=not quiet)
    batch = load_images(index, index.of_split(split), contract.preprocess, f"the {split} split", progress=not quiet)
    report, probs, predictions, seconds = _score(backend, batch, bootstrap)
    report.update({"model": os.path.abspath(model), "format": contract.format, "precision": contract.precision,
                   "runtime": backend.runtime, "split": split, "data_root": index.root, "inference_seconds": seconds,
                   "selftest": selftest, "cpu": cpu_description(),
                   "skipped_files": [{"file": f, "reason": r} for f, r in batch.skipped], "predictions": predictions})
    episodes = os.path.join(os.path.dirname(os.path.abspath(model)), "protonet.pt")
    if contract.method == "protonet" and os.path.exists(episodes) and split != "all":
        from edgecxr.data.episodes import episode_report

        # what a few-shot paper reports beside whole-split accuracy: N-way K-shot episodes
        report["episodes"] = episode_report(episodes, split, data, split_csv, progress=not quiet)
    name = os.path.splitext(os.path.basename(model))[0]
    out = out or os.path.join(os.path.dirname(os.path.abspath(model)), f"eval_{name}_{split}")
    write_json(os.path.join(out, "eval.json"), report)
    _save_plots(report, batch, probs, out, f"{contract.arch} {contract.format} {contract.precision} ({split})")
    _echo_summary(report, f"{model} [{backend.runtime}] on {split} split of {index.root}", split, batch, out)


def _score(backend: Any, batch: Any, bootstrap: int) -> tuple[dict[str, Any], np.ndarray, list[dict[str, Any]], float]:
    """Run the model on ``batch`` once: ``(metrics, plain softmax, per-image predictions, inference seconds)``.

    Headline metrics use the plain softmax, comparable with reports made before
    calibration (accuracy and F1 do not depend on T); the decision sections judge the
    model's temperature and conformal sets on the same logits."""
    from edgecxr.decide.report import decision_sections, model_logits
    from edgecxr.device.decision import calibrated_probabilities
    from edgecxr.eval.metrics import classification_report

    t0 = time.perf_counter()
    logits = model_logits(backend, batch.x)
    seconds = time.perf_counter() - t0
    probs = calibrated_probabilities(logits, None)
    report = classification_report(batch.y, probs, batch.classes, n_boot=bootstrap)
    report.update(decision_sections(logits, batch.y, batch.classes, backend.contract.decision, n_boot=bootstrap))
    return report, probs, _predictions(batch, logits, backend.contract.decision), seconds


def _predictions(batch: Any, logits: np.ndarray, decision: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each image's label, prediction and probabilities as the device shows them (calibrated),
    with its conformal prediction set when the model has one: for a reader auditing single cases."""
    from edgecxr.device.decision import calibrated_probabilities, set_mask

    shown = calibrated_probabilities(logits, decision)
    conformal = (decision or {}).get("conformal")
    sets = set_mask(shown, conformal) if conformal else None
    return [{"file": f, "label": batch.classes[int(t)], "pred": batch.classes[int(p.argmax())],
             "probabilities": [round(float(v), 6) for v in p],
             **({"prediction_set": [c for c, m in zip(batch.classes, sets[i]) if m]} if sets is not None else {})}
            for i, (f, t, p) in enumerate(zip(batch.files, batch.y, shown))]


def _save_plots(report: dict[str, Any], batch: Any, probs: np.ndarray, out: str, title: str) -> None:
    """confusion_matrix.png, roc.png and reliability.png beside eval.json."""
    from edgecxr.eval.plots import save_confusion_matrix, save_reliability_diagram, save_roc_curves

    save_confusion_matrix(report["confusion_matrix"], batch.classes, os.path.join(out, "confusion_matrix.png"), title)
    save_roc_curves(batch.y, probs, batch.classes, os.path.join(out, "roc.png"), title)
    save_reliability_diagram(report["calibration"]["reliability"], os.path.join(out, "reliability.png"), title,
                             report["calibration"]["temperature"])


def _echo_summary(report: dict[str, Any], header: str, split: str, batch: Any, out: str) -> None:
    """The terminal summary: metrics, decision sections, few-shot episodes, skipped files, what was written."""
    from edgecxr.decide.report import format_sections
    from edgecxr.eval.evaluate import format_report

    click.echo(format_report(report, header))
    click.echo(format_sections(report))
    if "episodes" in report:
        e = report["episodes"]
        lo, hi = e["accuracy_ci95"]
        click.echo(f"{e['n_way']}-way {e['k_shot']}-shot episode accuracy on {e['episodes']} {split} episodes: "
                   f"{e['mean_accuracy']:.4f} [{lo:.4f}, {hi:.4f}]")
    if batch.skipped:
        click.echo(f"skipped {len(batch.skipped)} unreadable files (listed in eval.json)")
    click.echo(f"wrote {out}/eval.json, confusion_matrix.png, roc.png, reliability.png")


@click.command("models")
def models_command() -> None:
    """List the registered backbones and their configs."""
    from edgecxr.models.registry import BACKBONES

    click.echo(f"{'name':<20}{'source':<13}{'input':>6}  {'kind':<12}notes")
    for c in BACKBONES.values():
        click.echo(f"{c.name:<20}{c.source:<13}{c.input_size:>6}  {'lightweight' if c.lightweight else 'baseline':<12}{c.notes}")
