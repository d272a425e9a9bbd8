"""``edgecxr sitecheck``: does MODEL hold up on a new site's images? GO (exit 0) or NO-GO (exit 3)."""
from __future__ import annotations

import os
import sys
from typing import Any

import click

from edgecxr.device.site_rules import NO_GO, Rules

EXIT_NO_GO = 3  # as convert's --max-drop gate
_DEFAULTS = Rules()


@click.command("sitecheck")
@click.argument("model", type=click.Path())
@click.option("--data", "site_dir", required=True, type=click.Path(file_okay=False),
              help="The new site's images (searched recursively); with --labels, one subfolder per class.")
@click.option("--labels", is_flag=True, help="Subfolders of --data are class names (a subset of the model's classes is fine): "
                                             "adds accuracy, sensitivity per class and a refit of T and qhat on the site.")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for sitecheck.json and sitecheck.md "
                                                             "(default: beside the model, sitecheck_<site folder name>/).")
@click.option("--stamp", is_flag=True, help="With --labels: write the site's T, qhat and OOD cuts (unfamiliar; not a chest "
                                            "X-ray, raised only) and their provenance into MODEL's contract (decision.site); "
                                            "the runner then applies them.")
@click.option("--coverage", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="With --labels: conformal coverage of the site's refitted qhat (default: the model's own).")
@click.option("--reference-data", type=click.Path(file_okay=False),
              help="Dataset the model was trained on (default: the one its contract records).")
@click.option("--split-csv", type=click.Path(dir_okay=False), help="Its split.csv (default: the one its contract records).")
@click.option("--max-refused", default=_DEFAULTS.max_refused, show_default=True, type=click.FloatRange(0, 1),
              help="NO-GO when a larger share of images is refused (unusable, or not a chest X-ray).")
@click.option("--max-ks", default=_DEFAULTS.max_ks, show_default=True, type=click.FloatRange(0, 1),
              help="NO-GO when the OOD score moved toward unfamiliar (one-sided KS D against validation) by more than this "
                   "with p < --ks-alpha; with --labels only a warning when the labels show the model holds up.")
@click.option("--ks-alpha", default=_DEFAULTS.ks_alpha, show_default=True, type=click.FloatRange(0, 1), help="See --max-ks.")
@click.option("--max-prevalence-shift", default=_DEFAULTS.max_prevalence_shift, show_default=True, type=click.FloatRange(0, 1),
              help="NO-GO when a class's BBSE 95% CI lies entirely further than this from its training prevalence "
                   "(with --labels: from the labelled mix).")
@click.option("--min-sensitivity", default=_DEFAULTS.min_sensitivity, show_default=True, type=click.FloatRange(0, 1),
              help="With --labels: NO-GO when a class's sensitivity on the site is below this.")
@click.option("--max-wrong-call", default=_DEFAULTS.max_wrong_call, show_default=True, type=click.FloatRange(0, 1),
              help="With --labels: NO-GO when more than this share of a class is answered as another class.")
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(0), help="Bootstrap resamples for the 95% CIs.")
@click.option("--threads", type=click.IntRange(1), help="Runtime threads.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print sitecheck.json on stdout instead of the table (the verdict line goes to stderr).")
def sitecheck_command(model: str, site_dir: str, labels: bool, out: str | None, stamp: bool, coverage: float | None,
                      reference_data: str | None,
                      split_csv: str | None, max_refused: float, max_ks: float, ks_alpha: float, max_prevalence_shift: float,
                      min_sensitivity: float, max_wrong_call: float, bootstrap: int, threads: int | None, quiet: bool, as_json: bool) -> None:
    """Check MODEL (a run folder, checkpoint, .onnx or .tflite) on a new site's images before deploying it:
    share refused, OOD-score shift (KS test against the validation split), class mix and BBSE
    prevalences against training, and with --labels sensitivity per class and a refit of T and qhat.
    Ends with one GO / NO-GO line and its reasons; exit 0 for GO, 3 for NO-GO, 2 for a usage error.

    \b
    Examples:
      edgecxr sitecheck runs/mnv2 --data clinic_a/                         # unlabelled images
      edgecxr sitecheck runs/mnv2/export/mobilenet_v2_int8.tflite --data clinic_a_sorted/ --labels --stamp
      python scripts/dev/simulate_site.py --data DATA --split-csv runs/mnv2/split.csv --shift gamma:0.5 --out /tmp/site_gamma
    """
    from edgecxr.decide.store import resolve_model
    from edgecxr.device.atomic import write_json, write_text
    from edgecxr.device.site_rules import judge
    from edgecxr.errors import EdgecxrError
    from edgecxr.models.runtime import is_checkpoint, open_model
    from edgecxr.site.check import load_site, measure
    from edgecxr.site.reference import resolve_reference
    from edgecxr.site.refit import refit
    from edgecxr.site.report import as_jsonable, json_report, markdown

    if stamp and not labels:
        raise EdgecxrError("--stamp writes T and qhat refitted on labelled images: add --labels (one subfolder per class)")
    path = resolve_model(model)
    if stamp and is_checkpoint(path):
        raise EdgecxrError(f"{path}: --stamp writes into the file a device runs (.onnx, .tflite, ...); in a checkpoint the site's "
                           "numbers would ride into every export convert makes, INT8 ones included, whose outputs differ: "
                           "run sitecheck --stamp on the export")
    backend = open_model(path, threads)
    contract = backend.contract
    site = load_site(site_dir, contract, labels, progress=not quiet)
    ref = resolve_reference(backend, reference_data, split_csv, progress=not quiet)
    m = measure(backend, site, ref, n_boot=bootstrap)
    refitted = refit(m, contract.decision, coverage) if labels else None
    rules = Rules(max_refused, max_ks, ks_alpha, max_prevalence_shift, min_sensitivity, max_wrong_call)
    judgement = judge(m, rules)
    name = os.path.basename(os.path.normpath(site_dir)) or "site"
    out = out or os.path.join(os.path.dirname(os.path.abspath(path)), f"sitecheck_{name}")
    header = _header(path, backend, site, ref, m)
    context = {"model": os.path.abspath(path), "format": contract.format, "precision": contract.precision, "runtime": backend.runtime,
               "site": site.root, "with_labels": labels}
    if stamp:
        context["stamped"], line = _stamp_site(path, contract, site, ref, m, refitted, judgement)
        header.append(line)
    report = as_jsonable(json_report(m, refitted, judgement, site, context))
    write_json(os.path.join(out, "sitecheck.json"), report)
    write_text(os.path.join(out, "sitecheck.md"), markdown(m, refitted, judgement, header))
    _echo_result(report, judgement, as_json, m, refitted, header + [f"wrote {out}/sitecheck.json and sitecheck.md"])
    if judgement["verdict"] == NO_GO:
        sys.exit(EXIT_NO_GO)


def _header(path: str, backend: Any, site: Any, ref: Any, m: dict[str, Any]) -> list[str]:
    """The lines that open the table and sitecheck.md: what was checked against what, and the
    decision numbers in force (so a reader knows which T, qhat and OOD cut were judged)."""
    contract = backend.contract
    force = m["decision_in_force"]
    return [f"site {site.root}: {m['n_images']} readable images, {m['n_unreadable']} unreadable skipped",
            f"model {path} ({contract.arch} {contract.format} {contract.precision}, {backend.runtime})",
            f"reference: {ref.origin}; training mix from {sum(ref.train_counts.values())} images",
            f"decision in force: T {_g(force['temperature'])}, qhat {_g(force['qhat'])} at coverage {_g(force['coverage'])}, "
            f"not-a-CXR cut {_g(force['ood_threshold'])}, unfamiliar cut {_g(force.get('unfamiliar_threshold'))}"
            + (f" (site {force['site_block']}'s numbers)" if force["site_block"] else "")]


def _stamp_site(path: str, contract: Any, site: Any, ref: Any, m: dict[str, Any], refitted: dict[str, Any] | None,
                judgement: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """--stamp: write the site's refitted T and qhat into the model file at ``path`` (the runner
    then applies them); returns the stamped block and the header line saying so. Raises
    when labelled images gave nothing to write."""
    from edgecxr.errors import EdgecxrError
    from edgecxr.site.refit import site_block
    from edgecxr.site.refit import stamp as write_stamp

    if not refitted or not refitted.get("conformal"):
        raise EdgecxrError(f"--stamp: nothing to write: {(refitted or {}).get('why', 'no labelled images')} (or drop --stamp)")
    block = site_block(site, m, refitted, judgement)
    write_stamp(path, block, ref.compact(f"{contract.format} {contract.precision}", contract.decision))
    t = _g(block["temperature"]) if "temperature" in block else "unchanged (the model's)"
    cuts = "".join(f", {k} cut {_g(block[k]['threshold'])}" for k in ("unfamiliar", "ood") if block.get(k))
    line = (f"stamped site {block['name']} into {path}: T {t}, qhat {_g(block['conformal']['qhat'])}{cuts}"
            + (" (verdict NO-GO: the runner applies these numbers anyway)" if judgement["verdict"] == NO_GO else ""))
    return block, line


def _echo_result(report: dict[str, Any], judgement: dict[str, Any], as_json: bool, m: dict[str, Any],
                 refitted: dict[str, Any] | None, lines: list[str]) -> None:
    """--json: sitecheck.json on stdout and the verdict line on stderr (stdout stays parseable);
    otherwise the table, headed by ``lines``."""
    from edgecxr.site.report import text

    if as_json:
        import json

        click.echo(json.dumps(report, indent=2))
        click.echo(judgement["line"], err=True)
    else:
        click.echo(text(m, refitted, judgement, lines))


def _g(x: float | None) -> str:
    return "-" if x is None else f"{float(x):.4g}"
