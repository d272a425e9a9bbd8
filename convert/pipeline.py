"""``convert_checkpoint``: checkpoint -> every requested artifact, verified, with a report.

The Python API behind ``edgecxr convert`` (the click command is a thin layer over
it, and the demo calls it directly). Order matters for the user's time: anything
that can be refused (no calibration images, ``--max-drop`` without verification
images) is refused before the first file is written. A failing format is recorded
with its reason and the others still complete; only the FP32 ONNX export is a hard
dependency, because every other artifact is made from it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable

from edgecxr.convert.formats import FORMAT_NAMES, artifact_name, get_format
from edgecxr.errors import EdgecxrError

Echo = Callable[[str], None]


def tool_versions() -> dict[str, str]:
    """Versions of everything that shaped the artifacts, read from package metadata (no imports)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("edgecxr", "torch", "onnx", "onnxruntime", "onnxsim", "onnxconverter-common", "onnx2tf", "tensorflow", "ai-edge-litert", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


@dataclass
class Step:
    """One artifact: what was made, how long it took, how big it is, or why it failed."""

    format: str
    precision: str
    file: str
    status: str = "pending"  # ok | failed | skipped
    reason: str = ""
    seconds: float = 0.0
    bytes: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    verify: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "precision": self.precision, "file": self.file, "status": self.status,
                "reason": self.reason, "seconds": round(self.seconds, 3), "bytes": self.bytes, "details": self.details,
                "verify": self.verify}


def _fail_reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:240] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, EdgecxrError) else text


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


class _Run:
    """State of one conversion; methods are the steps, in order."""

    def __init__(self, ckpt: str, out_dir: str, echo: Echo, threads: int | None) -> None:
        self.ckpt, self.out_dir, self.echo, self.threads = ckpt, out_dir, echo, threads
        self.steps: list[Step] = []

    def path(self, step: Step) -> str:
        return os.path.join(self.out_dir, step.file)

    def do(self, step: Step, fn: Callable[[], dict[str, Any] | None], extra_seconds: float = 0.0) -> bool:
        """Run one step; a failure is recorded and printed, never raised.

        ``extra_seconds``: time already spent on this artifact elsewhere (the shared
        TFLite child process), so the printed and reported time is the whole cost.
        """
        self.steps.append(step)
        t0 = time.perf_counter() - extra_seconds
        try:
            step.details = fn() or {}
            step.status = "ok"
            step.bytes = os.path.getsize(self.path(step))
        except Exception as exc:  # each format fails alone; the reason goes into the report
            step.status, step.reason = "failed", _fail_reason(exc)
        step.seconds = time.perf_counter() - t0
        self.announce(step)
        return step.status == "ok"

    def announce(self, step: Step) -> None:
        size = _mb(step.bytes) if step.status == "ok" else ""
        line = f"  {step.format:<7}{step.precision:<6}{step.status:<8}{step.seconds:>7.1f} s {size:>10}  {step.file}"
        if step.reason:
            line += f"  ({step.reason})"
        self.echo(line)


def convert_checkpoint(
    ckpt: str,
    out_dir: str,
    *,
    int8: bool = False,
    fp16: bool = False,
    formats: Iterable[str] = FORMAT_NAMES,
    calib_data: str | None = None,
    calib_n: int = 300,
    calib_method: str = "minmax",
    verify_data: str | None = None,
    split_csv: str | None = None,
    verify: bool = True,
    max_drop: float | None = None,
    keep_float: Iterable[str] = (),
    target: str = "portable",
    threads: int | None = None,
    progress: bool = True,
    echo: Echo = print,
) -> dict[str, Any]:
    """Convert ``ckpt`` into ``out_dir``; returns the report (also written as convert_report.json/.md).

    ``split_csv`` replaces the split recorded in the checkpoint (calibration uses its
    train images, verification its test images).

    Raises :class:`EdgecxrError` for what the user must fix first (missing
    checkpoint, INT8 without real calibration images, ``max_drop`` without
    verification images). Per-format failures are in ``report["artifacts"]``;
    ``report["gate"]["passed"]`` is False when an INT8 artifact lost more than
    ``max_drop`` macro-F1 points, and ``report["degraded"]`` lists artifacts outside
    the default tolerance (``verify.MIN_AGREEMENT``, ``verify.MAX_DROP_PP``); the CLI
    exits non-zero for either. ``target`` picks the INT8 scheme (``int8_target.py``).
    """
    from edgecxr.checkpoint import file_sha256
    from edgecxr.models import load_model
    from edgecxr.convert import calibration, onnx_export, quantize, report as report_mod, verify as verify_mod
    from edgecxr.convert.int8_target import plain_block, resolve_target
    from edgecxr.convert.quantize import CALIB_METHODS
    from edgecxr.device.cpufeatures import cpu_description

    t_start = time.perf_counter()
    host_cpu = cpu_description()
    int8_target = resolve_target(target, host_cpu)
    fmts = [get_format(f).name for f in formats]
    if calib_method not in CALIB_METHODS:
        raise EdgecxrError(f"--calib-method {calib_method!r}: choose one of {', '.join(CALIB_METHODS)}")
    if max_drop is not None and max_drop < 0:
        raise EdgecxrError(f"--max-drop must be a number of points >= 0, got {max_drop}")
    if max_drop is not None and not verify:
        raise EdgecxrError("--max-drop needs verification; drop --no-verify")
    keep_float = [k for k in keep_float if k]
    if keep_float and not int8:
        raise EdgecxrError("--keep-float only applies to INT8; add --int8")

    torch_model, contract = load_model(ckpt)
    if split_csv:  # the run folder moved, or another split: used for calibration and verification
        if not os.path.exists(split_csv):
            raise EdgecxrError(f"--split-csv {split_csv}: file not found")
        contract = replace(contract, source={**contract.source, "split_csv": os.path.abspath(split_csv)})
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    arch = contract.arch
    precisions = ("fp32",) + (("fp16",) if fp16 else ()) + (("int8",) if int8 else ())
    echo(f"convert {ckpt}: {arch}, {contract.num_classes} classes {list(contract.classes)}, {contract.input_size} px")

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

    os.makedirs(out_dir, exist_ok=True)
    sha = file_sha256(ckpt)
    versions = tool_versions()
    source = {"checkpoint": os.path.abspath(ckpt), "checkpoint_sha256": sha}
    int8_source = dict(source, calibration={**(calib.to_dict() if calib else {}), "method": calib_method},
                       keep_float=list(keep_float))
    plain, onnx_int8 = plain_block(host_cpu), int8_target.contract_block(host_cpu)
    run = _Run(ckpt, out_dir, echo, threads)
    spec = contract.preprocess

    # --- ONNX ---------------------------------------------------------------------------
    fp32 = Step("onnx", "fp32", artifact_name(arch, "onnx", "fp32"))
    ok32 = run.do(fp32, lambda: onnx_export.export_fp32(
        torch_model, onnx_export.onnx_contract(contract, "fp32", source, versions, plain), run.path(fp32)))
    if "onnx" in fmts and fp16:
        step = Step("onnx", "fp16", artifact_name(arch, "onnx", "fp16"))
        if ok32:
            run.do(step, lambda: _onnx_variant(run.path(fp32), run.path(step), lambda tmp: quantize.convert_fp16(run.path(fp32), tmp),
                                               onnx_export.onnx_contract(contract, "fp16", source, versions, plain)))
        else:
            _skip(run, step, "FP32 ONNX export failed")
    if "onnx" in fmts and int8:
        step = Step("onnx", "int8", artifact_name(arch, "onnx", "int8"))
        if ok32:
            x_cal = calib.nchw(spec)
            run.do(step, lambda: _onnx_variant(
                run.path(fp32), run.path(step),
                lambda tmp: quantize.quantize_int8(run.path(fp32), tmp, x_cal, calib_method, keep_float, onnx_export.INPUT_NAME,
                                                   reduce_range=int8_target.reduce_range),
                onnx_export.onnx_contract(contract, "int8", int8_source, versions, onnx_int8)))
        else:
            _skip(run, step, "FP32 ONNX export failed")

    # --- TFLite -------------------------------------------------------------------------
    if "tflite" in fmts:
        steps = {p: Step("tflite", p, artifact_name(arch, "tflite", p)) for p in precisions}
        if not ok32:
            for step in steps.values():
                _skip(run, step, "FP32 ONNX export failed")
        else:
            _tflite_steps(run, steps, run.path(fp32), contract, calib, spec, source, int8_source, versions, plain, echo)

    # --- verification ---------------------------------------------------------------------
    ref = _verify_steps(run, vset, torch_model, contract, host_cpu, threads, progress, echo) if vset is not None else None

    rep = report_mod.build_report(
        ckpt=ckpt, sha256=sha, contract=contract, out_dir=out_dir, steps=[s.to_dict() for s in run.steps],
        calibration=(dict(calib.to_dict(), method=calib_method) if calib else None),
        verification=(dict(vset.to_dict(), reference=ref) if vset is not None else None),
        max_drop=max_drop, keep_float=list(keep_float), versions=versions, seconds=time.perf_counter() - t_start,
        host_cpu=host_cpu, int8_target=(onnx_int8 if int8 else None),
    )
    report_mod.write_report(rep, out_dir)
    return rep


def _verify_steps(run: _Run, vset: Any, torch_model: Any, contract: Any, host_cpu: dict[str, Any], threads: int | None,
                  progress: bool, echo: Echo) -> dict[str, Any]:
    """Stamp golden vectors into each artifact, run it on the verification images, judge it.

    An artifact outside the default tolerance becomes ``degraded``; one whose contract
    says this CPU computes it wrong is measured anyway but ``unverified``: its numbers
    here say nothing about the CPUs it was made for (its self-test will, there).
    """
    from tqdm import tqdm

    from edgecxr.convert import golden as golden_mod, report as report_mod, verify as verify_mod
    from edgecxr.device.backends import open_backend
    from edgecxr.device.cpufeatures import unmet_requirement

    t0 = time.perf_counter()
    ref_logits = verify_mod.torch_logits(torch_model, vset.x)
    ref = verify_mod.reference_metrics(ref_logits, vset.y, vset.classes)
    ref["seconds"] = time.perf_counter() - t0
    echo(f"verify: PyTorch reference on {len(vset.y)} images: accuracy {ref['accuracy']:.4f}, macro-F1 {ref['macro_f1']:.4f}")
    gold = golden_mod.build(vset, ref_logits, torch_model, contract.preprocess)
    for step in tqdm([s for s in run.steps if s.status == "ok"], desc="verifying", unit="model", disable=not progress, leave=False):
        try:
            backend = open_backend(run.path(step), check_cpu=False)
            wrong_here = unmet_requirement(backend.contract.target, host_cpu, backend.runtime)
            del backend
            if gold is not None:
                host_probs = None if wrong_here else golden_mod.host_probabilities(run.path(step), gold, threads)
                step.details["golden_bytes"] = golden_mod.stamp(run.path(step), gold, host_probs, host_cpu)
                step.bytes = os.path.getsize(run.path(step))
            step.verify = verify_mod.verify_artifact(run.path(step), vset, ref_logits, threads)
        except Exception as exc:  # an artifact that cannot be run is a failed artifact
            step.status, step.reason = "failed", f"verification failed: {_fail_reason(exc)}"
            step.verify = None
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


def _skip(run: _Run, step: Step, reason: str) -> None:
    step.status, step.reason = "skipped", reason
    run.steps.append(step)
    run.announce(step)


def _onnx_variant(fp32_path: str, dest: str, make: Callable[[str], dict[str, Any]], contract: Any) -> dict[str, Any]:
    """Produce into a temp file, stamp the contract, then rename into place."""
    from edgecxr.convert.quantize import restamp

    with tempfile.TemporaryDirectory(prefix=".onnx-work-", dir=os.path.dirname(os.path.abspath(dest))) as tmp:
        produced = os.path.join(tmp, "model.onnx")
        details = make(produced)
        restamp(produced, contract, dest)
    return details


def _tflite_steps(run: _Run, steps: dict[str, Step], fp32_onnx: str, contract: Any, calib: Any, spec: Any,
                  source: dict, int8_source: dict, versions: dict, target: dict, echo: Echo) -> None:
    from edgecxr.convert import tflite

    work = tflite.make_work_dir(run.out_dir)
    try:
        echo(f"  tflite  ...   onnx2tf + TFLiteConverter ({', '.join(steps)}), in a child process")
        t0 = time.perf_counter()
        res = tflite.run_onnx2tf(fp32_onnx, tuple(steps), work, spec, calib.nhwc01(spec) if calib is not None else None)
        elapsed = time.perf_counter() - t0
        for p, step in steps.items():
            produced = res.paths.get(p)

            def install(p: str = p, produced: str | None = produced, step: Step = step) -> dict[str, Any]:
                if not produced:
                    raise EdgecxrError(res.errors.get(p, "onnx2tf produced no file"))
                c = tflite.tflite_contract(contract, produced, p, int8_source if p == "int8" else source, versions, target)
                saved = tflite.install(produced, run.path(step), c)
                return {"input": asdict(c.input), "output": asdict(c.output), "shared_quant_bytes": saved}

            spent = res.seconds.get("int8", 0.0) if p == "int8" else res.seconds.get("onnx2tf", elapsed)
            run.do(step, install, extra_seconds=spent)
        if any(s.status != "ok" for s in steps.values()) and res.log_tail:
            echo("  tflite log (last lines): " + " | ".join(res.log_tail.strip().splitlines()[-3:])[:600])
    finally:
        shutil.rmtree(work, ignore_errors=True)
