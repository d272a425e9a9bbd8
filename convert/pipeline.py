"""``convert_checkpoint``: checkpoint -> every requested artifact, verified, with a report.

The Python API behind ``edgecxr convert`` (the click command is a thin layer over
it); its choices come as one :class:`~edgecxr.convert.options.ConvertOptions`. It
plans, produces (one ``produce`` per format of the table, ``convert/formats``),
verifies and reports. Order matters for the user's time: anything that can be
refused (no calibration images, ``--max-drop`` without verification images) is
refused before the first file is written. A
failing format is recorded with its reason and the others still complete; only the
FP32 ONNX export is a hard dependency, because every other artifact is made from it.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, NamedTuple

from edgecxr.convert.formats import Production, export_formats, get_format
from edgecxr.convert.formats.availability import producible
from edgecxr.convert.options import ConvertOptions
from edgecxr.convert.steps import Echo, Run, Step, fail_reason
from edgecxr.errors import EdgecxrError

__all__ = ["ConvertOptions", "convert_checkpoint", "plan"]


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
    from edgecxr.models.factory import load_model

    torch_model, contract = load_model(ckpt)
    if split_csv:
        if not os.path.exists(split_csv):
            raise EdgecxrError(f"--split-csv {split_csv}: file not found")
        contract = replace(contract, source={**contract.source, "split_csv": os.path.abspath(split_csv)})
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return torch_model, contract


def _load_inputs(contract: Any, opts: ConvertOptions, progress: bool, echo: Echo) -> tuple[Any, Any]:
    """Calibration and verification images, or the one-line refusal, before any file is written."""
    from edgecxr.convert import calibration
    from edgecxr.convert import verify as verify_mod

    calib = None
    if opts.int8:
        calib = calibration.load_calibration(contract, opts.calib_data, opts.calib_n, progress=progress)
        echo(f"calibration: {calib.describe()}" + (f", {len(calib.skipped)} unreadable skipped" if calib.skipped else ""))
        if len(calib) < opts.calib_n:
            echo(f"calibration: asked for {opts.calib_n} images, {len(calib)} were available")
    vset = None
    if opts.verify:
        vset = verify_mod.load_verify_set(contract, opts.verify_data, progress=progress)
        if vset is None:
            if opts.max_drop is not None:
                raise EdgecxrError("--max-drop needs verification images: the checkpoint records no test split here; pass --verify-data DIR")
            echo("verification: skipped, the checkpoint records no test split here (pass --verify-data DIR)")
        else:
            echo(f"verification: {len(vset.y)} images from {vset.origin}")
    return calib, vset


class _Sources(NamedTuple):
    """What the conversion reads before writing anything (``_load_sources``)."""

    torch_model: Any
    contract: Any  # with the checkpoint's decision block
    calib: Any  # convert.calibration set, or None without INT8
    vset: Any  # convert.verify set, or None: not verified
    control: Any  # accuracy_control.ControlJob, or None


def _load_sources(ckpt: str, opts: ConvertOptions, progress: bool, echo: Echo) -> _Sources:
    """Everything read or judged before the first file is written, so a refusal (no images,
    an unreachable split) costs no export. The contract comes back with the checkpoint's
    decision block (temperature, conformal sets) that every export carries."""
    from edgecxr.decide.calibrate import ensure_decision

    torch_model, contract = _load_checkpoint(ckpt, opts.split_csv, opts.threads)
    echo(f"convert {ckpt}: {contract.arch}, {contract.num_classes} classes {list(contract.classes)}, {contract.input_size} px")
    calib, vset = _load_inputs(contract, opts, progress, echo)
    if calib is not None:
        from edgecxr.convert.score_anchors import with_score_anchors

        calib = with_score_anchors(calib, torch_model, echo)
    control = None
    if opts.accuracy_control is not None:  # ``accuracy_control.ControlSettings``: held-out images judged before any file is written
        from edgecxr.convert.accuracy_control import prepare

        control = prepare(torch_model, contract, calib, vset, opts.accuracy_control, progress, echo)
    contract = ensure_decision(ckpt, contract, opts.threads, progress, echo)  # temperature + conformal sets for every export
    return _Sources(torch_model, contract, calib, vset, control)


def _production(ckpt: str, out_dir: str, opts: ConvertOptions, src: _Sources, host_cpu: dict[str, Any],
                int8_target: Any, echo: Echo) -> Production:
    """What every format's ``produce`` reads: the model, its contract, the provenance stamped
    into each file (the checkpoint's hash; for INT8 also its calibration and kept-float
    nodes) and the INT8 scheme. Creates ``out_dir``."""
    from edgecxr.models.checkpoint import file_sha256
    from edgecxr.models.int8_target import plain_block
    from edgecxr.versions import tool_versions

    calib = src.calib
    keep_float = list(opts.keep_float)
    os.makedirs(out_dir, exist_ok=True)
    source = {"checkpoint": os.path.abspath(ckpt), "checkpoint_sha256": file_sha256(ckpt)}
    int8_source = dict(source, calibration={**(calib.to_dict() if calib else {}), "method": opts.calib_method}, keep_float=keep_float)
    return Production(run=Run(out_dir, echo, opts.threads), torch_model=src.torch_model, contract=src.contract, versions=tool_versions(),
                      source=source, int8_source=int8_source, plain_target=plain_block(host_cpu), int8_target=int8_target,
                      calib=calib, calib_method=opts.calib_method, keep_float=keep_float, accuracy_control=src.control)


def _produce_all(prod: Production, steps: dict[str, dict[str, Step]]) -> None:
    """One ``produce`` per format, in table order (ONNX FP32 first: the others are made from
    it); a format whose package is missing is skipped with its pip command."""
    for fmt in export_formats():
        ready = producible(prod.run, fmt, steps.get(fmt.name, {}))
        if ready:
            fmt.produce(prod, ready)


def _build_report(ckpt: str, out_dir: str, opts: ConvertOptions, prod: Production, steps: dict[str, dict[str, Step]], vset: Any,
                  ref: dict[str, Any] | None, host_cpu: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The report of ``report.build_report`` from what the conversion did: steps, inputs, gate, provenance."""
    from edgecxr.convert import report as report_mod

    calib = prod.calib
    return report_mod.build_report(
        ckpt=ckpt, sha256=prod.source["checkpoint_sha256"], contract=prod.contract, out_dir=out_dir,
        steps=[s.to_dict() for s in prod.run.steps],
        calibration=(dict(calib.to_dict(), method=opts.calib_method) if calib else None),
        verification=(dict(vset.to_dict(), reference=ref) if vset is not None else None),
        max_drop=opts.max_drop, keep_float=list(opts.keep_float), versions=prod.versions, seconds=seconds,
        host_cpu=host_cpu, int8_target=(prod.int8_target.contract_block(host_cpu) if opts.int8 else None),
        options={f.name: {p: f.options.get(p, "") for p in steps[f.name]} for f in export_formats() if f.name in steps},
    )


def convert_checkpoint(ckpt: str, out_dir: str, options: ConvertOptions | None = None, *, progress: bool = True,
                       echo: Echo = print) -> dict[str, Any]:
    """Convert ``ckpt`` into ``out_dir`` as ``options`` say (:class:`ConvertOptions`; None: its
    defaults); returns the report (also written as convert_report.json/.md).

    Raises :class:`EdgecxrError` for what the user must fix first (missing
    checkpoint, INT8 without real calibration images, ``max_drop`` without
    verification images, an option that needs another). Per-format failures are in
    ``report["artifacts"]``; ``report["gate"]["passed"]`` is False when an INT8 artifact
    lost more than ``max_drop`` macro-F1 points, and ``report["degraded"]`` lists
    artifacts outside the default tolerance (``verify.MIN_AGREEMENT``,
    ``verify.MAX_DROP_PP``); an ``accuracy_control`` search that fails is listed by
    ``accuracy_control.failures(report)``. The CLI exits non-zero for each.
    """
    from edgecxr.convert import report as report_mod
    from edgecxr.device.cpufeatures import cpu_description
    from edgecxr.models.int8_target import resolve_target

    opts = options or ConvertOptions()
    t_start = time.perf_counter()
    host_cpu = cpu_description()
    int8_target = resolve_target(opts.target, host_cpu)
    opts.check()
    fmts = [get_format(f).name for f in opts.formats]  # an unknown name is refused before any work

    src = _load_sources(ckpt, opts, progress, echo)
    prod = _production(ckpt, out_dir, opts, src, host_cpu, int8_target, echo)
    steps = plan(src.contract.arch, fmts, opts.precisions)
    _produce_all(prod, steps)

    vset = src.vset
    ref = _finish(prod.run, vset, src.torch_model, src.contract, host_cpu, opts.threads, progress, echo)
    rep = _build_report(ckpt, out_dir, opts, prod, steps, vset, ref, host_cpu, time.perf_counter() - t_start)
    report_mod.write_report(rep, out_dir)
    return rep


def _finish(run: Run, vset: Any, torch_model: Any, contract: Any, host_cpu: dict[str, Any], threads: int | None,
            progress: bool, echo: Echo) -> dict[str, Any] | None:
    """Each produced file, opened once with the contract staged for it: its INT8 decision
    refit, its golden vectors and its verification, then that contract written once,
    atomically, through the one door (``device/formats.py``). Returns the PyTorch
    reference's numbers (None without verification images)."""
    from edgecxr.convert import golden as golden_mod
    from edgecxr.convert import verify as verify_mod
    from edgecxr.convert.reference import RememberedLogits
    from edgecxr.progress import progress as progress_bar

    ref_logits, ref, gold = None, None, None
    checkpoint = RememberedLogits(torch_model) if torch_model is not None else None
    if vset is not None:
        t0 = time.perf_counter()
        ref_logits = verify_mod.torch_logits(torch_model, vset.x)
        ref = verify_mod.reference_metrics(ref_logits, vset.y, vset.classes)
        ref["seconds"] = time.perf_counter() - t0
        echo(f"verify: PyTorch reference on {len(vset.y)} images: accuracy {ref['accuracy']:.4f}, macro-F1 {ref['macro_f1']:.4f}")
        gold = golden_mod.build(vset, torch_model, contract.preprocess)
    for step in progress_bar([s for s in run.steps if s.status == "ok"], desc="verifying", unit="model", enabled=progress):
        _finish_one(run, step, vset, ref_logits, gold, host_cpu, threads, echo, checkpoint)
    if gold is not None:
        echo(f"golden vectors: {len(gold.grays)} verification images stamped into each artifact for --selftest")
    return ref


def _finish_one(run: Run, step: Step, vset: Any, ref_logits: Any, gold: Any, host_cpu: dict[str, Any], threads: int | None,
                echo: Echo, checkpoint: Any = None) -> None:
    """Refit (INT8), stamp and judge one file in one session; write its contract once, even
    when judging it failed (the file stays, and says what it is).

    An artifact outside the default tolerance becomes ``degraded``; one whose contract
    says this CPU computes it wrong is measured anyway but ``unverified``: its numbers
    here say nothing about the CPUs it was made for (its self-test will, there).
    """
    from edgecxr.convert import report as report_mod
    from edgecxr.convert import verify as verify_mod
    from edgecxr.convert.formats import get_format
    from edgecxr.device.formats import model_bytes, write_contract

    path, contract = run.path(step), run.contract(step)
    try:
        contract, wrong_here = _judge(step, path, contract, vset, ref_logits, gold, host_cpu, threads, echo, checkpoint)
    except Exception as exc:  # an artifact that cannot be run is a failed artifact, where it was to be verified
        wrong_here = None
        if vset is None:  # only a refit needed a session: the checkpoint's numbers stay
            echo(f"  {step.file}: decision not refitted ({fail_reason(exc)})")
        else:
            step.status, step.reason, step.verify = "failed", f"verification failed: {fail_reason(exc)}", None
    if contract is not None:
        finish = get_format(step.format).finish_contract
        try:
            write_contract(path, finish(contract) if finish else contract)
            step.bytes = model_bytes(path)
        except Exception as exc:  # a file without its contract is no artifact: failed, with the reason
            step.status, step.reason = "failed", f"contract not written: {fail_reason(exc)}"
            if vset is None:
                echo(f"  {step.file}: {step.reason}")
    if vset is None:
        return
    problem = verify_mod.degradation(step.verify) if step.verify else None
    if step.status == "failed":  # cannot be run, or its contract could not be written
        pass
    elif wrong_here:
        step.status, step.reason = "unverified", f"not exact on this CPU, so not judged here: {wrong_here}; run --selftest on the target"
    elif problem:
        step.status, step.reason = "degraded", problem
    echo(report_mod.verify_line(step.to_dict()))


def _judge(step: Step, path: str, contract: Any, vset: Any, ref_logits: Any, gold: Any, host_cpu: dict[str, Any],
           threads: int | None, echo: Echo, checkpoint: Any = None) -> tuple[Any, str | None]:
    """One session on ``path`` with ``contract``: the INT8 refit, the golden vectors and the
    verification; returns the contract to write and why this CPU computes the file wrong, if it does."""

    from edgecxr.convert import golden as golden_mod
    from edgecxr.convert import verify as verify_mod
    from edgecxr.device.cpufeatures import unmet_requirement
    from edgecxr.device.selftest import probabilities
    from edgecxr.models.runtime import open_model

    refit = step.precision == "int8" and contract is not None and bool(contract.decision)
    if vset is None and not refit:  # nothing to run the file for
        return contract, None
    backend = open_model(path, threads, require_contract=False, check_cpu=False, contract=contract)
    contract = backend.contract
    wrong_here = unmet_requirement(contract.target, host_cpu, backend.runtime) if contract is not None else None
    if refit:
        contract = _refit(step, backend, host_cpu, echo, checkpoint)
        backend.contract = contract
    if vset is None:
        return contract, wrong_here
    if gold is not None and contract is not None:
        host_probs = None if wrong_here else probabilities(backend, gold.grays)  # the device path, on this host
        stamped = golden_mod.with_golden(contract, gold, host_probs, host_cpu)
        step.details["golden_bytes"] = len(stamped.to_json()) - len(contract.to_json())
        contract = backend.contract = stamped
    step.verify = verify_mod.verify_artifact(backend, vset, ref_logits)
    return contract, wrong_here


def _refit(step: Step, backend: Any, host_cpu: dict[str, Any], echo: Echo, checkpoint: Any = None) -> Any:
    """Each INT8 file gets the temperature, conformal and OOD thresholds of its own
    validation outputs (``ood_fit.refit_decision``): T carried over from the checkpoint by the
    scale rounding gave the same images' logits (``checkpoint``: the PyTorch model's logits), the
    conformal thresholds kept, or both fitted afresh where the file is not its checkpoint plus
    rounding; the cuts always its own. FP32 and FP16 files keep
    the checkpoint's: they compute its outputs to ~1e-3, and a refit would only add the noise
    of 300 images. A file this CPU computes wrong (its contract's target), or one whose
    refit fails, keeps the checkpoint's numbers too. Returns the contract to carry."""
    from dataclasses import replace

    from edgecxr.decide.ood_fit import refit_decision

    try:
        refitted = refit_decision(backend, host_cpu, checkpoint)
    except Exception as exc:  # the file stays as verified, with the checkpoint's numbers
        echo(f"  {step.file}: decision not refitted ({fail_reason(exc)})")
        return backend.contract
    if not refitted:
        return backend.contract
    block, refit = refitted
    step.details["decision_refit"] = refit
    echo(f"  {step.file}: decision for its own outputs: " + "; ".join(_refit_parts(refit)))
    return replace(backend.contract, decision=block)


def _refit_parts(refit: dict[str, Any]) -> list[str]:
    parts = []
    if "kept_checkpoint_temperature" in refit:
        parts.append(f"checkpoint's T kept (refit {refit['kept_checkpoint_temperature']})")
    if "transfer_refused" in refit:
        parts.append(f"not carried over ({refit['transfer_refused']})")
    if "logit_scale" in refit:
        parts.append(f"{refit['agreement']:.1%} same answers as the checkpoint, logits x {refit['logit_scale']:.4f}: "
                     f"T {refit['temperature_from_checkpoint']:.4f} -> {refit['temperature']:.4f} and the conformal thresholds carried over")
    elif "temperature" in refit:
        parts.append(f"T {refit['temperature_from_checkpoint']:.4f} -> {refit['temperature']:.4f}, "
                     f"qhat {refit['qhat_from_checkpoint']} -> {refit['qhat']}")
    if "ood_threshold" in refit:
        parts.append(f"not-a-CXR cut {refit['ood_threshold_from_checkpoint']:.4f} -> {refit['ood_threshold']:.4f} "
                     f"({refit['ood_val_refused']:.1%} of validation refused)")
    if "unfamiliar_threshold" in refit:
        parts.append(f"unfamiliar cut {refit['unfamiliar_threshold_from_checkpoint']:.4f} -> {refit['unfamiliar_threshold']:.4f} "
                     f"({refit['unfamiliar_val_referred']:.1%} of validation referred)")
    return parts
