"""``edgecxr keygen`` and ``edgecxr sign``: thin click layers over :mod:`edgecxr.models.signing`."""
from __future__ import annotations

import click


@click.command("keygen")
@click.argument("prefix", type=click.Path(dir_okay=False))
def keygen_command(prefix: str) -> None:
    """Make an EC P-256 signing key pair: PREFIX.key (private, mode 0600; keep it off the device)
    and PREFIX.pub (copy it to the device and start the runner with --trust PREFIX.pub).

    \b
    Example:
      edgecxr keygen keys/release
      edgecxr sign runs/mnv2/export/mobilenet_v2_int8.tflite --key keys/release.key
    """
    from edgecxr.models.signing import keygen

    priv, pub = keygen(prefix)
    click.echo(f"wrote {priv} (private: keep it off the device) and {pub} (public: --trust on the device)")


@click.command("sign")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--key", required=True, type=click.Path(dir_okay=False), help="EC private key from `edgecxr keygen`.")
def sign_command(artifacts: tuple[str, ...], key: str) -> None:
    """Sign each model ARTIFACT (offline, OpenSSF model-signing): writes ARTIFACT.sig covering the
    model file and every companion the device reads with it (contract sidecar, .bin, .ncnn.bin).

    \b
    Example:
      edgecxr sign export/mobilenet_v2_int8.tflite export/mobilenet_v2_fp32.onnx --key keys/release.key
      python3 device/edgecxr_runner.py --model mobilenet_v2_int8.tflite --trust release.pub --image x.png
    """
    import os

    from edgecxr.device.signature import covered_files
    from edgecxr.models.signing import sign_artifact

    for path in artifacts:
        sig = sign_artifact(path, key)
        names = ", ".join(os.path.basename(f) for f in covered_files(path))
        click.echo(f"wrote {sig} ({names})")
