"""Real processes for the serve tests and the benchmark: the service, dcmtk's storescu (the
X-ray unit) and storescp (the PACS), all on 127.0.0.1 with free ports.

Waiting is by polling a condition with a generous deadline (a failure message, never a
timed assertion).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "device" / "edgecxr_runner.py"
VALIDATOR_ENV = {"JAVA_TOOL_OPTIONS": "-Djdk.xml.xpathExprOpLimit=0 -Djdk.xml.xpathTotalOpLimit=0 -Djdk.xml.xpathExprGrpLimit=0"}


DCMTK = ("storescu", "storescp")


def native_tool(name: str) -> str | None:
    """The first ``name`` on PATH that is a compiled program: pynetdicom installs Python apps called
    ``storescu``/``storescp`` into the venv, which ``make test`` puts ahead of dcmtk's on PATH."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            with open(path, "rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    return path
    return None


def tool(name: str) -> str | None:
    """dcmtk's tools by their compiled binary, any other by PATH."""
    return native_tool(name) if name in DCMTK else shutil.which(name)


def missing_tools(*names: str) -> list[str]:
    return [n for n in names if tool(n) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], bool], timeout: float, what: str, poll: float = 0.2) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(poll)
    raise AssertionError(f"gave up waiting ({timeout:.0f} s) for {what}")


STARTED: list = []  # every ServeProcess and Pacs started, so a failed test's teardown can stop them (stop_all)


def stop_all() -> None:
    while STARTED:
        proc = STARTED.pop()
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(timeout=30)


class ServeProcess:
    """``edgecxr_runner.py serve`` as a subprocess; stdout (JSON lines) and stderr (log) go to files."""

    def __init__(self, folder: Path, model: str, port: int | None, *extra: str, python: list[str] | None = None,
                 env: dict | None = None) -> None:
        self.folder = folder
        self.outbox, self.state = folder / "outbox", folder / "state"
        self.out, self.err = folder / "serve.jsonl", folder / "serve.log"
        args = [*(python or [sys.executable]), str(RUNNER), "serve", "--model", model, "--outbox", str(self.outbox),
                "--state", str(self.state), "--bind", "127.0.0.1", *extra]
        if port is not None:
            args += ["--port", str(port)]
        folder.mkdir(parents=True, exist_ok=True)
        self.log_start = self.err.stat().st_size if self.err.exists() else 0  # a restart appends to the same log
        with open(self.out, "ab") as out, open(self.err, "ab") as err:
            self.proc = subprocess.Popen(args, stdout=out, stderr=err, env={**os.environ, **(env or {})})
        STARTED.append(self)

    def log(self) -> str:
        return self.err.read_bytes().decode(errors="replace")

    def results(self) -> list[dict]:
        import json

        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def wait_ready(self, timeout: float = 180) -> None:
        wait_for(lambda: b"edgecxr-serve: ready" in self.err.read_bytes()[self.log_start:] or self.proc.poll() is not None, timeout,
                 "serve to start")
        assert self.proc.poll() is None, f"serve exited {self.proc.returncode}:\n{self.log()[-3000:]}"

    def journal_counts(self) -> dict[str, int]:
        path = self.state / "journal.sqlite"
        if not path.exists():
            return {}
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            try:
                return dict(db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state").fetchall())
            except sqlite3.OperationalError:
                return {}

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


class Pacs:
    """dcmtk's storescp, unique file names so an SR stored twice shows up as two files."""

    def __init__(self, folder: Path, port: int, aet: str = "PACS") -> None:
        self.folder, self.port, self.aet = folder, port, aet
        folder.mkdir(parents=True, exist_ok=True)
        self.log = open(folder.parent / f"storescp_{port}.log", "ab")
        self.proc = subprocess.Popen([str(tool("storescp")), "+uf", "-od", str(folder), "-aet", aet, str(port)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        STARTED.append(self)
        wait_for(self._listening, 30, "storescp to listen")

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def storescu(port: int, files: list[Path] | Path, *options: str, wait: bool = True, aet: str = "EDGECXR",
             timeout: float = 600) -> subprocess.Popen | subprocess.CompletedProcess:
    """Send files (or a whole folder) as the modality would; ``-R`` proposes only the classes the
    files need, ``-nh`` keeps going after a refused instance; ``options`` e.g. ``-xv`` to propose
    JPEG 2000 (else storescu converts, or fails to convert, a compressed file to uncompressed)."""
    paths = [str(files)] if isinstance(files, Path) else [str(f) for f in files]
    args = [str(tool("storescu")), "-R", "-nh", *options, "-aec", aet, *(["+sd"] if isinstance(files, Path) else []), "127.0.0.1", str(port), *paths]
    if wait:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
