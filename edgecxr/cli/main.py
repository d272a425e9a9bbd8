"""The ``edgecxr`` command: one subcommand per job.

Subcommands are imported only when run, so ``edgecxr --help`` stays instant and a
missing optional dependency of one stage never breaks another. Every error a user
can fix becomes one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import importlib

import click

COMMANDS = {
    "train": ("edgecxr.train.command:train_command", "Fine-tune a backbone on a folder of labelled CXRs (supervised or protonet)."),
    "eval": ("edgecxr.cli.eval:eval_command", "Accuracy, macro-F1, AUC with 95% CIs for a checkpoint, ONNX or TFLite model."),
    "convert": ("edgecxr.convert.command:convert_command", "Export ONNX, quantize (INT8/FP16), convert to TFLite, verify every artifact."),
    "debug-quant": ("edgecxr.convert.command:debug_quant_command", "Per-layer INT8 error, worst first, to choose --keep-float nodes."),
    "calibrate": ("edgecxr.cli.calibrate:calibrate_command", "Fit temperature and conformal sets on the validation split; store them in the model."),
    "sitecheck": ("edgecxr.cli.sitecheck:sitecheck_command", "Before deploying: does the model hold up on a new site's images? GO / NO-GO with reasons."),
    "card": ("edgecxr.cli.card:card_command", "A Markdown model card: intended use, data, metrics with CIs, calibration, refusals."),
    "bench": ("edgecxr.bench.command:bench_command", "Size, accuracy drop and latency tables, here or on a Raspberry Pi over SSH."),
    "explain": ("edgecxr.explain.command:explain_command", "Grad-CAM and LIME heatmaps, and how much they move after quantization."),
    "demo": ("edgecxr.cli.demo:demo_command", "The whole pipeline in one command: train, convert, bench, run, explain."),
    "models": ("edgecxr.cli.eval:models_command", "List the registered backbones."),
    "keygen": ("edgecxr.cli.signing:keygen_command", "Make an EC P-256 key pair for signing models (private .key, public .pub)."),
    "sign": ("edgecxr.cli.signing:sign_command", "Sign model files and their companions (ARTIFACT.sig, OpenSSF model-signing, offline)."),
}


class UserError(click.ClickException):
    exit_code = 2


def _user_error_types() -> tuple[type[BaseException], ...]:
    from edgecxr.device.backends import ModelLoadError
    from edgecxr.device.contract import ContractError
    from edgecxr.device.image_io import ImageError
    from edgecxr.errors import EdgecxrError

    return (EdgecxrError, ImageError, ModelLoadError, ContractError)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, _help = COMMANDS[name]
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("edgecxr"):
                return None  # stage not built in this checkout
            raise

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # help text without importing every stage (torch, TF) just to print --help
        with formatter.section("Commands"):
            formatter.write_dl([(n, h) for n, (_t, h) in COMMANDS.items()])

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except _user_error_types() as exc:
            raise UserError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edgecxr")
def cli() -> None:
    """edgecxr: take a chest X-ray classifier from training to a Raspberry Pi, and
    measure what each step costs in size, accuracy and latency.

    \b
    Typical flow:
      edgecxr train --data data/covid-radiography --arch mobilenet_v2 --out runs/mnv2
      edgecxr eval runs/mnv2/best.pt
      edgecxr convert runs/mnv2/best.pt --out runs/mnv2/export --int8 --fp16
      edgecxr bench runs/mnv2/export --threads 1,2
      python3 device/edgecxr_runner.py --model runs/mnv2/export/mobilenet_v2_int8.tflite --image xray.png
    """


def main() -> None:
    cli(prog_name="edgecxr")


if __name__ == "__main__":
    main()
