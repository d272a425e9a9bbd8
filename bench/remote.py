"""Benchmark on a Raspberry Pi over SSH, with the same runner a user would run there.

Steps: connect (host key checked against known_hosts; an unknown key is accepted
only with ``--accept-new-host-key``, a changed key never), check the remote Python, numpy
and which runtimes of ``device/runtimes/`` it can import (print the exact install
command when nothing could run; a row whose runtime alone is missing is skipped with
that runtime's install line), make a private temporary folder, copy ``device/``, each
artifact with its companions (``artifact_files``: OpenVINO's ``.bin``, ncnn's
``.ncnn.bin``, contract sidecars) and N test images over SFTP, run ``edgecxr_runner.py --bench`` once per
(artifact, thread count) and once in ``--dir`` mode for the agreement check, fetch
the JSON it wrote, and remove the folder again, also on errors.

Nothing a user passes reaches a shell unquoted: files travel over SFTP (no shell at
all) and every remote command is built from an argument list with ``shlex.quote``.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecxr.bench.artifacts import Artifact
from edgecxr.device.formats import artifact_files
from edgecxr.errors import EdgecxrError

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "remote_probe.py")
REMOTE_TMP_PREFIX = "/tmp/edgecxr-bench."
@dataclass(frozen=True)
class SshTarget:
    user: str | None
    host: str
    port: int = 22

    def __str__(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"


def parse_target(text: str) -> SshTarget:
    """``USER@ADDR[:PORT]``; IPv6 addresses in brackets (``pi@[fe80::1]:22``)."""
    m = re.fullmatch(r"(?:([^@\s]+)@)?(\[[^\]]+\]|[^:@\s\[\]]+)(?::(\d{1,5}))?", text.strip())
    if not m:
        raise EdgecxrError(f"--host {text!r}: expected USER@ADDR[:PORT], e.g. pi@raspberrypi.local or pi@10.0.0.7:2222")
    user, host, port = m.group(1), m.group(2).strip("[]"), int(m.group(3) or 22)
    if not 0 < port < 65536:
        raise EdgecxrError(f"--host {text!r}: port {port} is out of range")
    return SshTarget(user, host, port)


def quote_command(argv: list[str], cwd: str | None = None) -> str:
    """A POSIX shell command line in which every argument is one literal word."""
    cmd = " ".join(shlex.quote(str(a)) for a in argv)
    return f"cd {shlex.quote(cwd)} && {cmd}" if cwd else cmd


def _known_hosts_path(path: str | None) -> str:
    return os.path.expanduser(path or "~/.ssh/known_hosts")


class RemoteSession:
    """One SSH connection with SFTP; use as a context manager."""

    def __init__(self, target: SshTarget, identity: str | None = None, known_hosts: str | None = None,
                 accept_new: bool = False, timeout: float = 20.0) -> None:
        self.target, self.identity, self.accept_new, self.timeout = target, identity, accept_new, timeout
        self.known_hosts = _known_hosts_path(known_hosts)
        self.client: Any = None
        self.sftp: Any = None

    def __enter__(self) -> "RemoteSession":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def connect(self) -> None:
        import paramiko

        client = paramiko.SSHClient()
        if os.path.exists(self.known_hosts):
            client.load_host_keys(self.known_hosts)
        if self.accept_new:
            os.makedirs(os.path.dirname(self.known_hosts) or ".", exist_ok=True)
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # saved below; a *changed* key still fails
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        t = self.target
        try:
            client.connect(t.host, port=t.port, username=t.user, key_filename=self.identity, timeout=self.timeout,
                           banner_timeout=self.timeout, auth_timeout=self.timeout, allow_agent=self.identity is None,
                           look_for_keys=self.identity is None)
        except paramiko.BadHostKeyException as exc:
            raise EdgecxrError(f"{t}: host key CHANGED since it was recorded in {self.known_hosts}; refusing to connect "
                               "(if the Pi was reinstalled, remove its old line with ssh-keygen -R)") from exc
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise EdgecxrError(f"{t}: host key not in {self.known_hosts}; check it (ssh-keyscan -p {t.port} {t.host} | "
                                   "ssh-keygen -lf -) and rerun with --accept-new-host-key to trust and record it") from exc
            if isinstance(exc, paramiko.AuthenticationException):
                raise EdgecxrError(f"{t}: SSH login refused ({exc}); pass --identity KEY for a key the Pi accepts") from exc
            raise EdgecxrError(f"{t}: SSH failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        except (OSError, socket.timeout) as exc:
            raise EdgecxrError(f"{t}: cannot reach the Pi ({exc.strerror or exc}); check the address, port and network") from exc
        if self.accept_new:
            client.save_host_keys(self.known_hosts)
        self.client = client
        self.sftp = client.open_sftp()

    def close(self) -> None:
        for obj in (self.sftp, self.client):
            if obj is not None:
                obj.close()
        self.sftp = self.client = None

    def run(self, argv: list[str], cwd: str | None = None, timeout: float = 3600.0) -> tuple[int, str, str]:
        _stdin, stdout, stderr = self.client.exec_command(quote_command(argv, cwd), timeout=timeout)
        out = stdout.read().decode("utf-8", "replace")
        err = stderr.read().decode("utf-8", "replace")
        return stdout.channel.recv_exit_status(), out, err

    def mkdtemp(self) -> str:
        rc, out, err = self.run(["mktemp", "-d", REMOTE_TMP_PREFIX + "XXXXXXXX"])
        path = out.strip()
        if rc != 0 or not path.startswith(REMOTE_TMP_PREFIX):
            raise EdgecxrError(f"{self.target}: cannot create a temporary folder ({err.strip() or out.strip()})")
        return path

    def rmtree(self, path: str) -> None:
        if not path.startswith(REMOTE_TMP_PREFIX):  # only ever delete what mkdtemp made
            raise ValueError(f"refusing to delete {path!r}")
        self.run(["rm", "-rf", "--", path])

    def put(self, local: str, remote: str) -> None:
        self.sftp.put(local, remote)

    def mkdir(self, remote: str) -> None:
        self.sftp.mkdir(remote)

    def read_text(self, remote: str) -> str:
        with self.sftp.open(remote, "r") as fh:
            return fh.read().decode("utf-8", "replace")


def install_hint(python: str, missing: list[str]) -> str:
    return f"{python} -m pip install {' '.join(missing)}"


def check_remote(s: RemoteSession, python: str, workdir: str, needs: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The remote Python's versions and, under ``runtimes``, which runtime of the table it
    can import. Raises with the exact install command when numpy is missing or when none
    of ``needs`` (the runtimes the rows ask for) is there: then nothing could run."""
    from edgecxr.device.formats import RUNTIMES

    remote_probe = f"{workdir}/remote_probe.py"
    s.put(PROBE, remote_probe)
    table = {name: list(rt.modules) for name, rt in RUNTIMES.items()}
    rc, out, err = s.run([python, remote_probe, "check", json.dumps(table)])
    if rc != 0:
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise EdgecxrError(f"{s.target}: cannot run {python!r} there ({last[:160]}); install Python 3 or pass --remote-python PATH")
    try:
        info = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise EdgecxrError(f"{s.target}: unexpected reply from {python} ({out[:120]!r})") from exc
    missing = [] if info.get("numpy") else ["numpy"]
    have = info.get("runtimes") or {}
    if needs and not any(have.get(r) for r in needs):
        missing += [p for r in needs if r in RUNTIMES for p in RUNTIMES[r].packages]
    missing = list(dict.fromkeys(missing))
    if missing:
        raise EdgecxrError(f"{s.target}: Python {info.get('python')} there lacks {', '.join(missing)}; "
                           f"install with: {install_hint(python, missing)}")
    return info


def preflight(*, host: str, identity: str | None, known_hosts: str | None, accept_new: bool, python: str,
              paths: list[str] | None = None, runtimes: tuple[str, ...] = (), **_: Any) -> dict[str, Any]:
    """Connect and check the remote Python before any slow local work, so a wrong
    address, key or missing package is reported in seconds. ``paths`` and
    ``runtimes`` (bench's arguments) say which runtimes the rows will need."""
    from edgecxr.bench.artifacts import collect

    needs = needed_runtimes(collect(paths), runtimes) if paths else []
    with RemoteSession(parse_target(host), identity, known_hosts, accept_new) as s:
        tmp = s.mkdtemp()
        try:
            return check_remote(s, python, tmp, needs)
        finally:
            s.rmtree(tmp)


def needed_runtimes(artifacts: list[Artifact], wanted: tuple[str, ...]) -> list[str]:
    """The runtimes the Pi rows will run (bench's ``--runtimes`` per artifact), in order."""
    from edgecxr.bench.local import selected_runtimes
    from edgecxr.device.formats import device_format_of

    return list(dict.fromkeys(r for a in artifacts if device_format_of(a.path) is not None and a.contract is not None
                              for r in selected_runtimes(a.path, wanted)))


def pick_images(paths: list[str], n: int) -> list[str]:
    """``n`` images spread evenly over the (class-sorted) evaluation list."""
    if not paths:
        return []
    idx = np.unique(np.linspace(0, len(paths) - 1, min(n, len(paths))).round().astype(int))
    return [paths[i] for i in idx]


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "probe_peak_rss_mb" not in obj:
            return obj
    return None


def _probe_rss(text: str) -> float | None:
    for line in text.strip().splitlines():
        if '"probe_peak_rss_mb"' in line:
            return json.loads(line).get("probe_peak_rss_mb")
    return None


def runner_files(dev_dir: str) -> list[str]:
    """The runner's own files under ``dev_dir`` (relative paths, folders first): what a bare Pi
    copy needs, without caches or a local venv."""
    out = []
    for root, dirs, files in os.walk(dev_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__", "venv")))
        rel = os.path.relpath(root, dev_dir)
        out += [os.path.normpath(os.path.join(rel, f)) for f in sorted(files) if f.endswith((".py", ".txt", ".sh")) and not f.startswith(".")]
    return out


def send_runner(s: RemoteSession, dev_dir: str, remote_dir: str) -> None:
    """Copy the runner's files (its ``runtimes/`` package included) to ``remote_dir``."""
    made = {""}
    s.mkdir(remote_dir)
    for rel in runner_files(dev_dir):
        folder = os.path.dirname(rel)
        if folder not in made:
            s.mkdir(f"{remote_dir}/{folder}")
            made.add(folder)
        s.put(os.path.join(dev_dir, rel), f"{remote_dir}/{rel}")


def run_remote(artifacts: list[Artifact], evaluated: dict[str, Any], settings: Any, *, host: str, identity: str | None,
               known_hosts: str | None, accept_new: bool, python: str, n_images: int, workdir: str,
               progress: bool = True) -> dict[str, Any]:
    """Records keyed by (artifact path, runtime, threads) measured on the Pi, and the Pi's device info."""
    import edgecxr.device as device_pkg
    from edgecxr.progress import progress as progress_bar

    target = parse_target(host)
    from edgecxr.bench.local import default_runtime

    records: dict[tuple[str, str, int], dict[str, Any]] = {}
    device: dict[str, Any] = {}
    with RemoteSession(target, identity, known_hosts, accept_new) as s:
        tmp = s.mkdtemp()
        try:
            info = check_remote(s, python, tmp, needed_runtimes(artifacts, settings.runtimes))
            dev_dir = os.path.dirname(os.path.abspath(device_pkg.__file__))
            send_runner(s, dev_dir, f"{tmp}/device")
            s.mkdir(f"{tmp}/models")
            runnable = _runnable_rows(artifacts, settings, info, python, records)
            bar = progress_bar(total=len(runnable) * (len(settings.threads) + 1), desc="bench on Pi", unit="run", enabled=progress)
            for i, a, runtime in runnable:
                remote_model = send_artifact(s, a.path, f"{tmp}/models/{i:02d}_{os.path.basename(a.path)}")
                # a second runtime of a file (OpenVINO on .onnx) is compared with the host's default-runtime predictions
                ev = evaluated.get((a.path, runtime)) or evaluated.get((a.path, default_runtime(a.path)))
                images = pick_images(ev.eval_set.image_paths, n_images) if ev is not None and ev.eval_set is not None else []
                img_dir = f"{tmp}/images_{i:02d}"
                _send_images(s, img_dir, images)
                for t in settings.threads:
                    rec = _bench_once(s, python, tmp, f"{tmp}/bench_{i:02d}_{runtime}_{t}.json", remote_model, runtime, t,
                                      settings, img_dir if images else None)
                    records[(a.path, runtime, t)] = rec
                    device = device or rec.get("device_info", {})
                    bar.update(1)
                agreement = _agreement(s, python, tmp, remote_model, runtime, img_dir, images, ev) if images else None
                for t in settings.threads:
                    records[(a.path, runtime, t)]["host_agreement"] = agreement
                    records[(a.path, runtime, t)]["agreement_images"] = len(images)
                bar.update(1)
            bar.close()
        finally:
            s.rmtree(tmp)
    device = {**(device or _unknown_device(info)), "runtimes_available": info.get("runtimes") or {}}  # what the probe found there
    return {"records": records, "device": device, "packages": info}


def _runnable_rows(artifacts: list[Artifact], settings: Any, info: dict[str, Any], python: str,
                   records: dict[tuple[str, str, int], dict[str, Any]]) -> list[tuple[int, Artifact, str]]:
    """``(index, artifact, runtime)`` of each row the Pi can run. A row it cannot (a checkpoint,
    no contract, its runtime not installed there) gets a ``skip`` record per thread count in
    ``records``: skipped, not failed, so the table shows why without an error."""
    from edgecxr.bench.local import selected_runtimes

    runnable: list[tuple[int, Artifact, str]] = []
    for i, a in enumerate(artifacts):
        for runtime in selected_runtimes(a.path, settings.runtimes) or ["?"]:
            skip = _skip_reason(a, runtime, info, python)
            if skip:
                for t in settings.threads:
                    records[(a.path, runtime, t)] = {"skip": skip}
                continue
            runnable.append((i, a, runtime))
    return runnable


def _send_images(s: RemoteSession, img_dir: str, images: list[str]) -> None:
    """Copy the agreement images to ``img_dir`` once (a second runtime of the same file reuses
    them), numbered in order so the Pi's predictions map back to the host's."""
    if _exists(s, img_dir):
        return
    s.mkdir(img_dir)
    for k, p in enumerate(images):
        s.put(p, f"{img_dir}/{k:04d}{os.path.splitext(p)[1].lower()}")


def _bench_once(s: RemoteSession, python: str, tmp: str, out: str, remote_model: str, runtime: str, threads: int, settings: Any,
                img_dir: str | None) -> dict[str, Any]:
    """One ``edgecxr_runner.py --bench`` run on the Pi under the memory probe in ``tmp``, writing ``out``; its
    record with peak RSS and thread count, or an ``error`` naming the runner's last stderr line."""
    args = ["--model", remote_model, "--runtime", runtime, "--bench", "--threads", str(threads), "--warmup", str(settings.warmup),
            "--runs", str(settings.runs), "--min-seconds", str(settings.min_seconds)]
    if img_dir is not None:
        args += ["--dir", img_dir]
    rc, _o, err = s.run([python, f"{tmp}/remote_probe.py", "run", out, "--", *args])
    text = s.read_text(out) if rc == 0 or _exists(s, out) else ""
    rec = _last_json(text) or {}
    if rc != 0 or "runs_ms" not in rec:
        last = (err.strip().splitlines() or [f"exit {rc}"])[-1]
        rec = {"error": f"runner failed on the Pi: {last[:200]}"}
    rec["peak_rss_mb"] = _probe_rss(text)
    rec["threads"] = threads
    return rec


def _unknown_device(info: dict[str, Any]) -> dict[str, Any]:
    """Device info when no run reported its own (every row failed or was skipped): what the probe saw."""
    return {"board": "", "cpu": "?", "cores": 0, "machine": info.get("machine", "?"), "os": "?", "kernel": "?",
            "python": info.get("python", "?"), "numpy": info.get("numpy") or "?", "runtime": "", "emulated": False}


def _exists(s: RemoteSession, path: str) -> bool:
    try:
        s.sftp.stat(path)
        return True
    except OSError:
        return False


def send_artifact(s: RemoteSession, path: str, remote: str) -> str:
    """Copy the artifact's primary file and its companions (weights file, contract sidecar),
    each named from ``remote`` as the format names it from ``path``; returns ``remote``."""
    from edgecxr.device.formats import device_format_of

    fmt = device_format_of(path)
    theirs = dict(zip(fmt.companion_paths(path), fmt.companion_paths(remote))) if fmt else {}
    for local in artifact_files(path):
        s.put(local, theirs.get(local, remote))
    return remote


def _skip_reason(a: Artifact, runtime: str, info: dict[str, Any], python: str) -> str | None:
    from edgecxr.device.formats import RUNTIMES, device_format_of

    if device_format_of(a.path) is None:  # the checkpoint row, a foreign file
        return f"not run on the Pi: no device runtime opens {a.format} files (device/runtimes/); convert to TFLite"
    if a.contract is None:
        return "not run on the Pi: the device runner needs a model contract (foreign model)"
    needs = RUNTIMES.get(runtime)
    if needs is not None and not (info.get("runtimes") or {}).get(runtime):
        return f"not run on the Pi: {runtime} is not installed there; install with: {install_hint(python, needs.packages)}"
    return None


def _agreement(s: RemoteSession, python: str, tmp: str, model: str, runtime: str, img_dir: str, images: list[str], ev: Any) -> float | None:
    """Top-1 agreement between the Pi's predictions and this machine's on the copied images."""
    out = f"{img_dir}_{runtime}.jsonl"
    rc, _o, _e = s.run([python, f"{tmp}/remote_probe.py", "run", out, "--", "--model", model, "--runtime", runtime, "--dir", img_dir,
                        "--json", "--csv", f"{img_dir}_{runtime}.csv"])
    if rc != 0 or ev is None or ev.probs is None:
        return None
    pi_pred: dict[int, str] = {}
    for line in s.read_text(out).splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if "label" in obj and "file" in obj:
            pi_pred[int(os.path.splitext(os.path.basename(obj["file"]))[0])] = obj["label"]
    pos = {p: i for i, p in enumerate(ev.eval_set.image_paths)}
    pairs = [(pi_pred[k], ev.eval_set.classes[int(ev.probs[pos[p]].argmax())]) for k, p in enumerate(images) if k in pi_pred]
    return float(np.mean([a == b for a, b in pairs])) if pairs else None
