"""``edgecxr card``: write a model's Markdown card from its run's files."""
from __future__ import annotations

import click


@click.command("card")
@click.argument("model", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), help="Where to write the card (default: MODEL_card.md next to the model).")
@click.option("--run-dir", type=click.Path(file_okay=False), help="The run folder (default: the checkpoint's folder recorded in the model).")
@click.option("--ood", "ood_files", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="OOD evaluation JSON to report (default: every ood*.json next to the run and the model).")
def card_command(model: str, out: str | None, run_dir: str | None, ood_files: tuple[str, ...]) -> None:
    """Write a Markdown model card for MODEL (a run folder, checkpoint, .onnx or .tflite):
    intended use, data and split, metrics with CIs, calibration, coverage, refusals,
    per-format changes, known data biases, and the command behind each number.

    \b
    Examples:
      edgecxr card runs/mnv2 --out runs/mnv2/MODEL_CARD.md
      edgecxr card runs/mnv2/export/mobilenet_v2_int8.tflite
    """
    import os

    from edgecxr.card.build import gather
    from edgecxr.card.render import render
    from edgecxr.decide.store import resolve_model
    from edgecxr.device.atomic import write_text

    path = resolve_model(model)
    inputs = gather(path, run_dir, list(ood_files) or None)
    out = out or os.path.splitext(path)[0] + "_card.md"
    write_text(out, render(inputs))
    missing = [name for name, have in (("eval.json", inputs.evals), ("convert_report.json", inputs.convert_reports),
                                       ("ood*.json", inputs.ood)) if not have]
    click.echo(f"wrote {out}" + (f" (not measured yet: {', '.join(missing)})" if missing else ""))
