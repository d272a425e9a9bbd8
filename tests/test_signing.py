"""Signed artifacts: ``edgecxr sign`` (model-signing) on the workstation, ``device/signature.py``
(cryptography alone) on the device, agreeing on every file of every format, and the runner
refusing a model whose files changed before it opens it. Offline throughout."""
from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from decision_fixtures import BLOCK, png, toy_onnx
from helpers import ROOT, run_bare_runner, run_cli

from edgecxr.device.signature import SignatureError, candidate_files, covered_files, verify_model
from edgecxr.models.signing import keygen, sign_artifact, sign_report_artifacts, verify_with_model_signing

RUNNER = str(ROOT / "device" / "edgecxr_runner.py")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("keys")
    priv, pub = keygen(str(d / "release"))
    other_priv, other_pub = keygen(str(d / "other"))
    return {"priv": priv, "pub": pub, "other_priv": other_priv, "other_pub": other_pub}


def _artifact(folder: Path, fmt: str) -> str:
    """One artifact of ``fmt`` with its companions (bytes stand in for weights: only digests matter here)."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        return toy_onnx(str(folder / "m_fp32.onnx"), BLOCK)
    files = {"tflite": ["m_int8.tflite", "m_int8.tflite.json"], "openvino": ["m_fp32.xml", "m_fp32.bin"],
             "ncnn": ["m_fp32.ncnn.param", "m_fp32.ncnn.bin", "m_fp32.ncnn.param.json"]}[fmt]
    for i, name in enumerate(files):
        (folder / name).write_bytes(bytes(range(256)) * (i + 3))
    (folder / "unrelated_other_model.onnx").write_bytes(b"not covered")
    return str(folder / files[0])


def _both(model: str, pub: str) -> tuple[bool, bool, str]:
    try:
        verify_model(model, pub)
        mine, line = True, ""
    except SignatureError as exc:
        mine, line = False, str(exc)
    try:
        verify_with_model_signing(model, pub)
        theirs = True
    except (ValueError, InvalidSignature):  # model-signing raises both, depending on what does not match
        theirs = False
    return mine, theirs, line


TAMPERS = ("flip a byte", "append a byte", "remove", "add a sidecar")


def _tamper(model: str, target: str, kind: str) -> str | None:
    """Apply ``kind`` to ``target``; returns the file the refusal must name (None: the change is not one)."""
    if kind == "flip a byte":
        data = bytearray(Path(target).read_bytes())
        data[len(data) // 2] ^= 0x01
        Path(target).write_bytes(bytes(data))
    elif kind == "append a byte":
        with open(target, "ab") as fh:
            fh.write(b"\0")
    elif kind == "remove":
        os.remove(target)
    elif kind == "add a sidecar":
        extra = [p for p in candidate_files(model) if not os.path.exists(p)]
        if not extra:
            return None
        Path(extra[0]).write_text("{}")
        return os.path.basename(extra[0])
    return os.path.basename(target)


@pytest.mark.parametrize("fmt", ["onnx", "tflite", "openvino", "ncnn"])
def test_device_verifier_and_model_signing_agree_on_every_file_and_change(fmt, keys, tmp_path):
    model = _artifact(tmp_path / "clean", fmt)
    sign_artifact(model, keys["priv"])
    names = sorted(os.path.basename(p) for p in covered_files(model))
    stmt = json.loads(base64.b64decode(json.loads(Path(model + ".sig").read_text())["dsseEnvelope"]["payload"]))
    assert sorted(r["name"] for r in stmt["predicate"]["resources"]) == names  # every companion, nothing unrelated
    assert _both(model, keys["pub"])[:2] == (True, True)
    assert _both(model, keys["other_pub"])[:2] == (False, False)  # the right files, the wrong key
    cases = 0
    for target in [*covered_files(model), None]:
        for kind in TAMPERS:
            if (target is None) != (kind == "add a sidecar"):
                continue
            work = tmp_path / f"t{cases}"
            shutil.copytree(tmp_path / "clean", work)
            m = str(work / os.path.basename(model))
            named = _tamper(m, str(work / os.path.basename(target)) if target else m, kind)
            if named is None:
                continue
            mine, theirs, line = _both(m, keys["pub"])
            assert (mine, theirs) == (False, False), (fmt, target, kind)
            assert line.startswith(f"{named}: "), line  # one line naming the file
            cases += 1
    assert cases >= len(names) * 3


def test_an_edited_signature_file_is_refused_by_both(keys, tmp_path):
    model = _artifact(tmp_path, "tflite")
    sign_artifact(model, keys["priv"])
    sig = Path(model + ".sig")
    bundle = json.loads(sig.read_text())
    payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    payload["predicate"]["resources"][0]["digest"] = "0" * 64  # a forger re-lists a digest without the key
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    sig.write_text(json.dumps(bundle))
    mine, theirs, line = _both(model, keys["pub"])
    assert (mine, theirs) == (False, False)
    assert "m_int8.tflite.sig" in line


def _runner(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, RUNNER, *args], capture_output=True, text=True, timeout=120)


def test_tamper_matrix_the_runner_refuses_before_opening_naming_the_file(keys, tmp_path):
    """file x kind of change -> exit 2 and one line naming the file; printed for docs/results/trust.md."""
    clean = tmp_path / "clean"
    onnx = _artifact(clean, "onnx")
    tfl = _artifact(clean, "tflite")  # not a real TFLite file: a refusal proves the check ran before the interpreter
    for m in (onnx, tfl):
        sign_artifact(m, keys["priv"])
    img = png(tmp_path / "x.png", 200)
    ok = _runner("--model", onnx, "--image", img, "--trust", keys["pub"])
    assert ok.returncode == 0 and "signature: signed, verified with key" in ok.stdout and ok.stdout.rstrip().endswith("signed")
    rows = []
    for model in (onnx, tfl):
        files = [*covered_files(model), model + ".sig", None]
        for target in files:
            for kind in TAMPERS:
                if (target is None) != (kind == "add a sidecar"):
                    continue
                work = tmp_path / f"w{len(rows)}"
                shutil.copytree(clean, work)
                m = str(work / os.path.basename(model))
                named = _tamper(m, str(work / os.path.basename(target)) if target else m, kind)
                if named is None:
                    continue
                proc = _runner("--model", m, "--image", img, "--trust", keys["pub"])
                err = proc.stderr.strip().splitlines()
                assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("edgecxr-runner: error: "), (named, kind, proc.stderr)
                assert named in err[0] or (named.endswith(".sig") and kind == "remove" and "no signature" in err[0]), err[0]
                assert "Traceback" not in proc.stderr and proc.stdout == ""
                rows.append(f"| {named} | {kind} | {err[0]} |")
    wrong = _runner("--model", onnx, "--image", img, "--trust", keys["other_pub"])
    assert wrong.returncode == 2 and "not trusted here" in wrong.stderr
    rows.append(f"| m_fp32.onnx.sig | signed by another key | {wrong.stderr.strip()} |")
    print("\n".join(["| file | change | runner's line (exit 2) |", "|---|---|---|", *rows]))
    assert len(rows) >= 12


def test_without_trust_the_header_and_every_result_say_unsigned(tmp_path):
    model = toy_onnx(str(tmp_path / "m.onnx"), BLOCK)
    png(tmp_path / "a.png", 200)
    png(tmp_path / "b.png", 128)
    text = _runner("--model", model, "--dir", str(tmp_path), "--csv", str(tmp_path / "p.csv"))
    assert text.returncode == 0, text.stderr
    header, *lines = text.stdout.strip().splitlines()
    assert header.endswith("signature: unsigned") and len(lines) == 2 and all(x.endswith("  unsigned") for x in lines)
    with open(tmp_path / "p.csv", newline="") as fh:
        assert [r["signature"] for r in csv.DictReader(fh)] == ["unsigned", "unsigned"]
    js = _runner("--model", model, "--image", str(tmp_path / "a.png"), "--json")
    assert json.loads(js.stdout)["signature"] == "unsigned"


def test_the_bare_device_verifies_with_cryptography_alone(keys, tmp_path):
    model = toy_onnx(str(tmp_path / "m.onnx"), BLOCK)
    img = png(tmp_path / "x.png", 200)
    sign_artifact(model, keys["priv"])
    hide = ("model_signing", "sigstore", "sigstore_models", "OpenSSL", "google")
    ok = run_bare_runner(tmp_path, "--model", model, "--image", img, "--trust", keys["pub"], "--json", hide=hide)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["signature"] == "signed"
    with open(model, "ab") as fh:
        fh.write(b"\0")
    bad = run_bare_runner(tmp_path, "--model", model, "--image", img, "--trust", keys["pub"], hide=hide)
    assert bad.returncode == 2 and "m.onnx: changed since it was signed" in bad.stderr


def test_keygen_and_sign_cli_and_convert_sign_pieces(tmp_path):
    out = run_cli("keygen", str(tmp_path / "k" / "rel"))
    assert "rel.key" in out.stdout and oct(os.stat(tmp_path / "k" / "rel.key").st_mode & 0o777) == "0o600"
    again = run_cli("keygen", str(tmp_path / "k" / "rel"), check=False)
    assert again.returncode == 2 and "never overwrites" in again.stderr
    model = _artifact(tmp_path / "a", "tflite")
    signed = run_cli("sign", model, "--key", str(tmp_path / "k" / "rel.key"))
    assert "m_int8.tflite, m_int8.tflite.json" in signed.stdout
    not_model = run_cli("sign", model + ".json", "--key", str(tmp_path / "k" / "rel.key"), check=False)
    assert not_model.returncode == 2 and "not a model file" in not_model.stderr
    report = {"artifacts": [{"file": os.path.basename(model), "status": "ok"}, {"file": "gone.onnx", "status": "failed"}]}
    os.remove(model + ".sig")
    assert sign_report_artifacts(str(tmp_path / "a"), report, str(tmp_path / "k" / "rel.key"), lambda m: None) == [model + ".sig"]
    verify_model(model, str(tmp_path / "k" / "rel.pub"))
    from edgecxr.convert.options import ConvertOptions
    from edgecxr.errors import EdgecxrError

    with pytest.raises(EdgecxrError, match="--sign"):
        ConvertOptions(sign_key=str(tmp_path / "missing.key")).check()


@pytest.mark.slow
def test_convert_sign_writes_signatures_the_runner_trusts(trained_run, tmp_path):
    priv, pub = keygen(str(tmp_path / "release"))
    out = tmp_path / "export"
    run_cli("convert", str(trained_run / "best.pt"), "--out", str(out), "--int8", "--formats", "onnx,tflite", "--keep-degraded",
            "--no-verify", "--sign", priv)
    models = sorted(p for p in os.listdir(out) if p.endswith((".onnx", ".tflite")))
    assert models and all((out / (m + ".sig")).exists() for m in models)
    tfl = str(out / next(m for m in models if m.endswith("int8.tflite")))
    proc = _runner("--model", tfl, "--selftest", "--trust", pub)
    assert proc.returncode == 0 and "signature: signed" in proc.stdout, proc.stderr
