"""``edgecxr convert`` and ``edgecxr debug-quant``: thin click layers over the Python API
(:func:`edgecxr.convert.pipeline.convert_checkpoint`, :func:`edgecxr.convert.debug.debug_quant`)."""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from edgecxr.convert.accuracy_control import ControlSettings

EXIT_GATE_FAILED = 3


def _split_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@click.command("convert")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the artifacts and convert_report.json/.md.")
@click.option("--int8", is_flag=True, help="Also write INT8 models (needs real calibration images).")
@click.option("--fp16", is_flag=True, help="Also write FP16 models.")
@click.option("--formats", default="onnx,tflite", show_default=True, help="Comma-separated formats of the table (onnx, tflite, openvino, ...). FP32 ONNX is always written. "
                   "A format whose package is not installed is skipped, with the pip command that installs it.")
@click.option("--calib-data", type=click.Path(file_okay=False), help="Folder of calibration images (one subfolder per class). Default: the train split recorded in the checkpoint.")
@click.option("--calib-n", default=300, show_default=True, type=click.IntRange(1), help="Calibration images, drawn stratified by class.")
@click.option("--calib-method", default="minmax", show_default=True, type=click.Choice(["minmax", "entropy", "percentile", "minmax-avg"]), help="ONNX Runtime calibration method for INT8 ONNX (minmax-avg: mean of per-batch ranges).")
@click.option("--verify-data", type=click.Path(file_okay=False), help="Folder of verification images (every image is used). Default: the run's test split.")
@click.option("--split-csv", type=click.Path(dir_okay=False), help="split.csv to use instead of the one recorded in the checkpoint (calibration: its train images, verification: its test images).")
@click.option("--no-verify", is_flag=True, help="Skip running the artifacts on verification images.")
@click.option("--max-drop", type=float, help="Exit with code 3 when an INT8 artifact loses more than this many macro-F1 points.")
@click.option("--keep-float", default="", help="Comma-separated ONNX node names to keep in float in INT8 ONNX (see `edgecxr debug-quant`).")
@click.option("--target", default="portable", show_default=True, type=click.Choice(["portable", "host", "x86-vnni", "arm64"]),
              help="CPUs the INT8 ONNX file must be exact on. portable: u8 x u8, exact on every CPU (no faster than FP32 on x86). "
                   "x86-vnni/arm64: full-range u8 x s8, fast but exact only on x86 with AVX-512 VNNI or AVX-VNNI and on ARM "
                   "(refused elsewhere by the runner). host: the fastest exact choice for this CPU. TFLite INT8 is exact "
                   "everywhere and ignores it.")
@click.option("--accuracy-control", is_flag=True,
              help="With --int8 --max-drop PP: judge each INT8 file on held-out training images (train rows of split.csv not used "
                   "for calibration, never test images) and return layers to float, the most harmful first (measured: each "
                   "layer alone in float, held-out KL divergence from the checkpoint), until the macro-F1 drop is <= PP and "
                   "top-1 agreement >= --min-agreement, or --max-float-layers are spent (then exit 3). ONNX: ORT nodes_to_exclude; "
                   "TFLite: the MLIR quantizer's denylisted_nodes. The report lists the layers, each one's latency cost and the "
                   "final drop on the test split.")
@click.option("--min-agreement", default=0.99, show_default=True, type=click.FloatRange(0, 1),
              help="--accuracy-control: lowest top-1 agreement with the checkpoint on the held-out images.")
@click.option("--max-float-layers", default=8, show_default=True, type=click.IntRange(0),
              help="--accuracy-control: at most this many layers back to float per INT8 file.")
@click.option("--control-n", default=1000, show_default=True, type=click.IntRange(16),
              help="--accuracy-control: held-out training images (stratified, seed 1; fewer if the split has fewer). "
                   "The limit is judged on all of them, layers are ranked on the 300 INT8 disturbs most; the search costs "
                   "one requantization and one pass over those 300 per quantized layer (MobileNetV2: 64 layers).")
@click.option("--control-latency-runs", default=50, show_default=True, type=click.IntRange(0),
              help="--accuracy-control: timed runs per step when benchmarking each added float layer (bench's protocol, "
                   "--threads or 1 thread; 0: skip).")
@click.option("--keep-degraded", is_flag=True, help="Exit 0 even when an artifact is outside the default tolerance (it is still marked DEGRADED).")
@click.option("--threads", type=click.IntRange(1), help="Threads for torch and the runtimes during verification.")
@click.option("--sign", "sign_key", type=click.Path(dir_okay=False), help="Sign every file written with this EC private key (`edgecxr keygen`): ARTIFACT.sig, checked by the runner's --trust.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def convert_command(ckpt: str, out_dir: str, int8: bool, fp16: bool, formats: str, calib_data: str | None, calib_n: int,
                    calib_method: str, verify_data: str | None, split_csv: str | None, no_verify: bool, max_drop: float | None, keep_float: str,
                    target: str, accuracy_control: bool, min_agreement: float, max_float_layers: int, control_n: int,
                    control_latency_runs: int, keep_degraded: bool, threads: int | None, sign_key: str | None, quiet: bool) -> None:
    """Convert checkpoint CKPT to ONNX and TFLite (FP32, and FP16/INT8 on request), run every
    artifact on verification images against the PyTorch model, and write a report.

    \b
    Files in OUT: <arch>_fp32.onnx, <arch>_fp16.onnx, <arch>_int8.onnx,
    <arch>_fp32.tflite, <arch>_fp16.tflite, <arch>_int8.tflite (each with a
    .tflite.json contract sidecar), convert_report.json and convert_report.md.

    \b
    Examples:
      edgecxr convert runs/mnv2/best.pt --out runs/mnv2/export --int8 --fp16
      edgecxr convert runs/mnv2/best.pt --out exp --int8 --formats onnx --calib-method entropy
      edgecxr convert best.pt --out exp --int8 --calib-data data/covid-radiography --verify-data data/tbcxr
      edgecxr convert best.pt --out exp --int8 --max-drop 0.5      # CI gate: exit 3 if INT8 loses > 0.5 pt
      edgecxr convert best.pt --out exp --int8 --max-drop 0.3 --accuracy-control   # layers back to float until it holds
      edgecxr debug-quant best.pt --data data/covid-radiography     # then --keep-float NODE,...

    INT8 needs real calibration images and is refused without them.

    
    Every artifact is run on the verification images and must stay within the
    default tolerance: top-1 agreement with PyTorch >= 95% and macro-F1 drop
    <= 2 points (ignored below 2 flipped images). Outside it the artifact is
    DEGRADED and convert exits 3 (--keep-degraded: exit 0, still marked).
    Each artifact also carries 8 golden images with the expected outputs:
    `python3 device/edgecxr_runner.py --model FILE --selftest` checks it on the
    CPU it lands on.
    """
    from edgecxr.convert.formats import parse_formats
    from edgecxr.convert.options import ConvertOptions
    from edgecxr.convert.pipeline import convert_checkpoint
    from edgecxr.convert.report import REPORT_JSON, REPORT_MD, terminal_table

    fmts = [f.name for f in parse_formats(formats)]  # an unknown name is refused first
    control = _control_settings(accuracy_control, max_drop, min_agreement, max_float_layers, control_n, control_latency_runs, threads)
    options = ConvertOptions(
        int8=int8, fp16=fp16, formats=fmts, calib_data=calib_data, calib_n=calib_n,
        calib_method=calib_method, verify_data=verify_data, split_csv=split_csv, verify=not no_verify, max_drop=max_drop,
        keep_float=_split_list(keep_float), accuracy_control=control, target=target, threads=threads, sign_key=sign_key,
    )
    report = convert_checkpoint(ckpt, out_dir, options, progress=not quiet, echo=click.echo)
    if sign_key:
        from edgecxr.models.signing import sign_report_artifacts

        sign_report_artifacts(out_dir, report, sign_key, click.echo)
    click.echo("")
    click.echo(terminal_table(report))
    from edgecxr.convert.accuracy_control import report_lines

    for line in report_lines(report):  # --accuracy-control: what was kept in float and what it cost
        click.echo(line)
    click.echo(f"\nwrote {os.path.join(out_dir, REPORT_JSON)} and {REPORT_MD} ({report['seconds']:.0f} s in all)")
    status = _exit_status(report, keep_degraded)
    if status:
        sys.exit(status)


def _control_settings(enabled: bool, max_drop: float | None, min_agreement: float, max_float_layers: int, control_n: int,
                      latency_runs: int, threads: int | None) -> ControlSettings | None:
    """``accuracy_control.ControlSettings`` from the --accuracy-control flags, or None without it.
    Refused without --max-drop: the search needs the limit it controls."""
    if not enabled:
        return None
    from edgecxr.convert.accuracy_control import ControlSettings
    from edgecxr.errors import EdgecxrError

    if max_drop is None:
        raise EdgecxrError("--accuracy-control needs the limit it controls: add --max-drop PP")
    return ControlSettings(max_drop, min_agreement, max_float_layers, control_n, latency_runs, threads or 1)


def _exit_status(report: dict, keep_degraded: bool) -> int:
    """Print what went wrong, loudly, and the exit code: 3 for a failed gate or a degraded artifact."""
    failed = [a for a in report["artifacts"] if a["status"] in ("failed", "skipped")]
    if failed:
        click.echo(f"{len(failed)} artifact(s) not produced: " + "; ".join(f"{a['file']} ({a['reason']})" for a in failed), err=True)
    for a in report["artifacts"]:
        if a["status"] == "unverified":
            click.echo(f"UNVERIFIED {a['file']}: {a['reason']}", err=True)
    stop = False
    from edgecxr.convert.accuracy_control import failures

    for line in failures(report):  # the limit could not be met on the held-out images: one line each
        click.echo(f"ACCURACY CONTROL FAILED {line}", err=True)
        stop = True
    if report["degraded"]:
        click.echo("DEGRADED (outside the default tolerance): " + "; ".join(report["degraded"]), err=True)
        if not keep_degraded:
            click.echo("fix the model (e.g. train --qat, --keep-float) or pass --keep-degraded to keep these files", err=True)
            stop = True
    gate = report["gate"]
    if not gate["passed"]:
        click.echo(f"--max-drop {gate['max_drop_pp']:g}: FAILED: " + "; ".join(gate["failures"]), err=True)
        stop = True
    elif gate["max_drop_pp"] is not None:
        click.echo(f"--max-drop {gate['max_drop_pp']:g}: passed")
    return EXIT_GATE_FAILED if stop else 0


@click.command("debug-quant")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(file_okay=False), help="Folder of real images (one subfolder per class). Default: the run's train split.")
@click.option("--n", "n", default=32, show_default=True, type=click.IntRange(16), help="Images to run (memory grows with it: every tensor is kept).")
@click.option("--calib-method", default="minmax", show_default=True, type=click.Choice(["minmax", "entropy", "percentile", "minmax-avg"]))
@click.option("--keep-float", default="", help="Nodes to keep in float, to see the effect of a choice.")
@click.option("--top", default=20, show_default=True, type=click.IntRange(0), help="Rows to print (0: all); the JSON has all.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="JSON file (default: debug_quant.json next to MODEL).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def debug_quant_command(model: str, data: str | None, n: int, calib_method: str, keep_float: str, top: int,
                        out_file: str | None, quiet: bool) -> None:
    """Per-layer INT8 error of MODEL (checkpoint or FP32 ONNX), worst first.

    SQNR (dB) of every activation before vs after its quantization, and against
    the FP32 model, from ONNX Runtime's QDQ debugging tools. Nodes at the top are
    candidates for `edgecxr convert --int8 --keep-float NODE,...`.

    \b
    Examples:
      edgecxr debug-quant runs/mnv2/best.pt
      edgecxr debug-quant runs/mnv2/export/mobilenet_v2_fp32.onnx --data data/covid-radiography --n 64
      edgecxr debug-quant best.pt --keep-float /head/head.1/Gemm   # what changes if the head stays float
    """
    from edgecxr.convert.debug import debug_quant, format_table
    from edgecxr.device.atomic import write_json

    result = debug_quant(model, data, n, calib_method, tuple(_split_list(keep_float)), progress=not quiet)
    out_file = out_file or os.path.join(os.path.dirname(os.path.abspath(model)), "debug_quant.json")
    write_json(out_file, result)
    click.echo(format_table(result, top))
    click.echo(f"wrote {out_file}")
