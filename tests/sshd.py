"""A real OpenSSH server on 127.0.0.1 for tests of the SSH (Raspberry Pi) path.

Own host key, own authorised client key, a free high port, no passwords, started
as ``sshd -D`` and stopped when the fixture ends. Skips when openssh-server is not
installed (``.ci/run`` installs it with apt-get).
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class SshServer:
    host: str
    port: int
    user: str
    client_key: Path
    host_pub: str  # "ssh-ed25519 AAAA..."
    folder: Path

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def known_hosts_line(self) -> str:
        return f"[{self.host}]:{self.port} {self.host_pub}\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, capture_output=True)


def start_sshd(folder: Path) -> tuple[subprocess.Popen, SshServer]:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd) or not shutil.which("ssh-keygen"):
        pytest.skip("openssh-server not installed (apt-get install openssh-server)")
    folder.mkdir(parents=True, exist_ok=True)
    host_key, client_key = folder / "host_ed25519", folder / "client_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    (folder / "authorized_keys").write_text((folder / "client_ed25519.pub").read_text())
    os.chmod(folder / "authorized_keys", 0o600)
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # privilege-separation directory sshd insists on as root
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        "StrictModes no", "PermitRootLogin prohibit-password", f"PidFile {folder / 'sshd.pid'}",
        "Subsystem sftp internal-sftp", "LogLevel ERROR", "MaxStartups 50", "",
    ]))
    proc = subprocess.Popen([sshd, "-f", str(config), "-D", "-e"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {proc.stderr.read().decode()[-300:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    break
        except OSError:
            time.sleep(0.1)
    else:
        proc.terminate()
        pytest.skip("sshd did not accept connections within 15 s")
    host_pub = " ".join((folder / "host_ed25519.pub").read_text().split()[:2])
    return proc, SshServer("127.0.0.1", port, getpass.getuser(), client_key, host_pub, folder)


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory):
    proc, server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
