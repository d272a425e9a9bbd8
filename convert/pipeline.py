"""``convert_checkpoint``: checkpoint -> every requested artifact, verified, with a report.

The Python API behind ``edgecxr convert`` (the click command is a thin layer over
it, and the demo calls it directly). It plans, produces (one ``produce`` per format
of the table, ``convert/formats``), verifies and reports. Order matters for the
user's time: anything that can be refused (no calibration images, ``--max-drop``
without verification images) is refused before the first file is written. A
failing format is recorded with its reason and the others still complete; only the
FP32 ONNX export is a hard dependency, because every other artifact is made from it.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from edgecxr.convert.formats import Production, export_formats, get_format
from edgecxr.convert.formats.availability import producible
from edgecxr.convert.steps import Echo, Run, Step, fail_reason
from edgecxr.errors import EdgecxrError


def _check_options(calib_method: str, max_drop: float | None, verify: bool, keep_float: list[str], int8: bool) -> None:
    from edgecxr.convert.quantize import CALIB_METHODS

    if calib_method not in CALIB_METHODS:
        raise EdgecxrError(f"--calib-method {calib_method!r}: choose one of {', '.join(CALIB_METHODS)}")
    if max_drop is not None and max_drop < 0:
        raise EdgecxrError(f"--max-drop must be a number of points >= 0, got {max_drop}")
    if max_drop is not None and not verify:
        raise EdgecxrError("--max-drop needs verification; drop --no-verify")
    if keep_float and not int8:
        raise EdgecxrError("--keep-float only applies to INT8; add --int8")


def plan(arch: str, formats: Iterable[str], precisions: tuple[str, ...]) -> dict[str, dict[str, Step]]:
    """The steps per format, in table order; the source format (ONNX FP32) is always planned."""
    wanted = {get_format(f).name for f in formats}
    from edgecxr.convert.formats import PRECISIONS

    out: dict[str, dict[str, Step]] = {}
    for i, fmt in enumerate(export_formats()):
        chosen = [p for p in precisions if p in fmt.precisions] if fmt.name in wanted else []
        if i == 0 and "fp32" not in chosen:  # every other artifact is made from it
            chosen = ["fp32", *chosen]
        if chosen:
            out[fmt.name] = {p: Step(fmt.name, p, fmt.artifact_name(arch, p)) for p in PRECISIONS if p in chosen}
    return out


def _load_checkpoint(ckpt: str, split_csv: str | None, threads: int | None) -> tuple[Any, Any]:
    """The model and its contract; ``split_csv`` replaces the recorded split (the run folder moved)."""
    from edgecxr.models import load_model

    torch_model, contract = load_model(ckpt)
    if split_csv:
        if not os.path.exists(split_csv):
            raise EdgecxrError(f"--split-csv {split_csv}: file not found")
        contract = replace(contract, source={**contract.source, "split_csv": os.path.abspath(split_csv)})
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return torch_model, contract


def _load_inputs(contract: Any, int8: bool, calib_data: str | None, calib_n: int, verify: bool, verify_data: str | None,
                 max_drop: float | None, progress: bool, echo: Echo) -> tuple[Any, Any]:
    """Calibration and verification images, or the one-line refusal, before any file is written."""
    from edgecxr.convert import calibration
    from edgecxr.convert import verify as verify_mod

    calib = None
    if int8:
        calib = calibration.load_calibration(contract, calib_data, calib_n, progress=progress)
        echo(f"calibration: {calib.describe()}" + (f", {len(calib.skipped)} unreadable skipped" if calib.skipped else ""))
        if len(calib) < calib_n:
            echo(f"calibration: asked for {calib_n} images, {len(calib)} were available")
    vset = None
    if verify:
        vset = verify_mod.load_verify_set(contract, verify_data, progress=progress)
        if vset is None:
            if max_drop is not None:
                raise EdgecxrError("--max-drop needs verification images: the checkpoint records no test split here; pass --verify-data DIR")
            echo("verification: skipped, the checkpoint records no test split here (pass --verify-data DIR)")
        else:
            echo(f"verification: {len(vset.y)} images from {vset.origin}")
    return calib, vset


def convert_checkpoint(
    ckpt: str,
    out_dir: str,
    *,
    int8: bool = False,
    fp16: bool = False,
    formats: Iterable[str] = ("onnx", "tflite"),
    calib_data: str | None = None,
    calib_n: int = 300,
    calib_method: str = "minmax",
    verify_data: str | None = None,
    split_csv: str | None = None,
    verify: bool = True,
    max_drop: float | None = None,
    keep_float: Iterable[str] = (),
    accuracy_control: Any = None,
    target: str = "portable",
    threads: int | None = None,
    progress: bool = True,
    echo: Echo = print,
) -> dict[str, Any]:
    """Convert ``ckpt`` into ``out_dir``; returns the report (also written as convert_report.json/.md).

    ``split_csv`` replaces the split recorded in the checkpoint (calibration uses its
    train images, verification its test images). ``target`` picks the ONNX INT8
    scheme (``int8_target.py``). ``accuracy_control``
    (``accuracy_control.ControlSettings``) returns INT8 layers to float until each INT8
    file holds its limit on held-out training images; an artifact whose search fails
    is listed by ``accuracy_control.failures(report)`` and the CLI exits non-zero.

    Raises :class:`EdgecxrError` for what the user must fix first (missing
    checkpoint, INT8 without real calibration images, ``max_drop`` without
    verification images). Per-format failures are in ``report["artifacts"]``;
    ``report["gate"]["passed"]`` is False when an INT8 artifact lost more than
    ``max_drop`` macro-F1 points, and ``report["degraded"]`` lists artifacts outside
    the default tolerance (``verify.MIN_AGREEMENT``, ``verify.MAX_DROP_PP``); the CLI
    exits non-zero for either.
    """
    from edgecxr.checkpoint import file_sha256
    from edgecxr.convert import report as report_mod
    from edgecxr.convert.int8_target import plain_block, resolve_target
    from edgecxr.device.cpufeatures import cpu_description
    from edgecxr.versions import tool_versions

    t_start = time.perf_counter()
    host_cpu = cpu_description()
    int8_target = resolve_target(target, host_cpu)
    keep_float = [k for k in keep_float if k]
    _check_options(calib_method, max_drop, verify, keep_float, int8)
    if accuracy_control is not None and not int8:
        raise EdgecxrError("--accuracy-control only applies to INT8; add --int8")
    fmts = [get_format(f).name for f in formats]  # an unknown name is refused before any work
    precisions = ("fp32",) + (("fp16",) if fp16 else ()) + (("int8",) if int8 else ())

    torch_model, contract = _load_checkpoint(ckpt, split_csv, threads)
    echo(f"convert {ckpt}: {contract.arch}, {contract.num_classes} classes {list(contract.classes)}, {contract.input_size} px")
    calib, vset = _load_inputs(contract, int8, calib_data, calib_n, verify, verify_data, max_drop, progress, echo)
    control = None
    if accuracy_control is not None:  # ``accuracy_control.ControlSettings``: held-out images judged before any file is written
        from edgecxr.convert.accuracy_control import prepare

        control = prepare(torch_model, contract, calib, vset, accuracy_control, progress, echo)
    from edgecxr.calibrate import ensure_decision

    contract = ensure_decision(ckpt, contract, threads, progress, echo)  # temperature + conformal sets for every export

    os.makedirs(out_dir, exist_ok=True)
    sha = file_sha256(ckpt)
    source = {"checkpoint": os.path.abspath(ckpt), "checkpoint_sha256": sha}
    int8_source = dict(source, calibration={**(calib.to_dict() if calib else {}), "method": calib_method}, keep_float=list(keep_float))
    run = Run(out_dir, echo, threads)
    prod = Production(run=run, torch_model=torch_model, contract=contract, versions=tool_versions(), source=source,
                      int8_source=int8_source, plain_target=plain_block(host_cpu), int8_target=int8_target, calib=calib,
                      calib_method=calib_method, keep_float=keep_float, accuracy_control=control)
    steps = plan(contract.arch, fmts, precisions)
    for fmt in export_formats():
        ready = producible(run, fmt, steps.get(fmt.name, {}))  # a missing package: skipped, with its pip command
        if ready:
            fmt.produce(prod, ready)

    _refit_decisions(run, host_cpu, threads, echo)  # before verification: its ECE change and golden vectors use the refit
    ref = _verify_steps(run, vset, torch_model, contract, host_cpu, threads, progress, echo) if vset is not None else None
    rep = report_mod.build_report(
        ckpt=ckpt, sha256=sha, contract=contract, out_dir=out_dir, steps=[s.to_dict() for s in run.steps],
        calibration=(dict(calib.to_dict(), method=calib_method) if calib else None),
        verification=(dict(vset.to_dict(), reference=ref) if vset is not None else None),
        max_drop=max_drop, keep_float=keep_float, versions=prod.versions, seconds=time.perf_counter() - t_start,
        host_cpu=host_cpu, int8_target=(int8_target.contract_block(host_cpu) if int8 else None),
        options={f.name: {p: f.options.get(p, "") for p in steps[f.name]} for f in export_formats() if f.name in steps},
    )
    report_mod.write_report(rep, out_dir)
    return rep


def _refit_decisions(run: Run, host_cpu: dict[str, Any], threads: int | None, echo: Echo) -> None:
    """Each INT8 file gets the temperature, conformal and OOD thresholds of its own
    validation outputs (``ood_fit.refit_artifact_decision``). FP32 and FP16 files keep the
    checkpoint's: they compute its outputs to ~1e-3, and a refit would only add the noise
    of 300 images. A file this CPU computes wrong (its contract's target), or one that
    failed, keeps the checkpoint's numbers too."""
    from edgecxr.device.formats import model_bytes
    from edgecxr.ood_fit import refit_artifact_decision

    for step in run.steps:
        if step.precision != "int8" or step.status != "ok":
            continue
        try:
            refit = refit_artifact_decision(run.path(step), threads, host_cpu)
        except Exception as exc:  # the file stays as verified, with the checkpoint's numbers
            echo(f"  {step.file}: decision not refitted ({fail_reason(exc)})")
            continue
        if refit:
            step.details["decision_refit"] = refit
            step.bytes = model_bytes(run.path(step))
            parts = []
            if "kept_checkpoint_temperature" in refit:
                parts.append(f"checkpoint's T kept (refit {refit['kept_checkpoint_temperature']})")
            if "temperature" in refit:
                parts.append(f"T {refit['temperature_from_checkpoint']:.4f} -> {refit['temperature']:.4f}, "
                             f"qhat {refit['qhat_from_checkpoint']} -> {refit['qhat']}")
            if "ood_threshold" in refit:
                parts.append(f"OOD threshold {refit['ood_threshold_from_checkpoint']:.4f} -> {refit['ood_threshold']:.4f} "
                             f"({refit['ood_val_refused']:.1%} of validation refused)")
            echo(f"  {step.file}: refitted on its own validation outputs: " + "; ".join(parts))


def _verify_steps(run: Run, vset: Any, torch_model: Any, contract: Any, host_cpu: dict[str, Any], threads: int | None,
                  progress: bool, echo: Echo) -> dict[str, Any]:
    """Stamp golden vectors into each artifact, run it on the verification images, judge it.

    An artifact outside the default tolerance becomes ``degraded``; one whose contract
    says this CPU computes it wrong is measured anyway but ``unverified``: its numbers
    here say nothing about the CPUs it was made for (its self-test will, there).
    """
    from edgecxr.convert import golden as golden_mod
    from edgecxr.convert import report as report_mod
    from edgecxr.convert import verify as verify_mod
    from edgecxr.progress import progress as progress_bar

    t0 = time.perf_counter()
    ref_logits = verify_mod.torch_logits(torch_model, vset.x)
    ref = verify_mod.reference_metrics(ref_logits, vset.y, vset.classes)
    ref["seconds"] = time.perf_counter() - t0
    echo(f"verify: PyTorch reference on {len(vset.y)} images: accuracy {ref['accuracy']:.4f}, macro-F1 {ref['macro_f1']:.4f}")
    gold = golden_mod.build(vset, torch_model, contract.preprocess)
    for step in progress_bar([s for s in run.steps if s.status == "ok"], desc="verifying", unit="model", enabled=progress):
        try:
            wrong_here = _verify_one(run, step, vset, ref_logits, gold, host_cpu, threads)
        except Exception as exc:  # an artifact that cannot be run is a failed artifact
            step.status, step.reason, step.verify = "failed", f"verification failed: {fail_reason(exc)}", None
            echo(report_mod.verify_line(step.to_dict()))
            continue
        problem = verify_mod.degradation(step.verify)
        if wrong_here:
            step.status, step.reason = "unverified", f"not exact on this CPU, so not judged here: {wrong_here}; run --selftest on the target"
        elif problem:
            step.status, step.reason = "degraded", problem
        echo(report_mod.verify_line(step.to_dict()))
    if gold is not None:
        echo(f"golden vectors: {len(gold.grays)} verification images stamped into each artifact for --selftest")
    return ref


def _verify_one(run: Run, step: Step, vset: Any, ref_logits: Any, gold: Any, host_cpu: dict[str, Any], threads: int | None) -> str | None:
    """Stamp, then verify one artifact; returns why this CPU computes it wrong, if it does."""
    from edgecxr.convert import golden as golden_mod
    from edgecxr.convert import verify as verify_mod
    from edgecxr.device.cpufeatures import unmet_requirement
    from edgecxr.device.formats import model_bytes
    from edgecxr.device.selftest import probabilities
    from edgecxr.runtime import open_model

    path = run.path(step)
    backend = open_model(path, threads, check_cpu=False)  # one session: target, host outputs, contract to stamp
    wrong_here = unmet_requirement(backend.contract.target, host_cpu, backend.runtime)
    if gold is not None:
        host_probs = None if wrong_here else probabilities(backend, gold.grays)  # the device path, on this host
        step.details["golden_bytes"] = golden_mod.stamp(path, backend.contract, gold, host_probs, host_cpu)
        step.bytes = model_bytes(path)
    del backend
    step.verify = verify_mod.verify_artifact(path, vset, ref_logits, threads)  # reopens: proves the stamped file loads
    return wrong_here
