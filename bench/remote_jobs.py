"""Run device-side commands on the Pi over SSH: copy ``device/`` and the artifacts once, run
one command per artifact, return what each printed, and remove everything again.

The sustained and cold-start benchmarks both need exactly this (``bench/remote.py``
does the same for ``--bench`` with more bookkeeping); every command is an argument
list quoted by :func:`edgecxr.bench.remote.quote_command`, files travel over SFTP.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from edgecxr.bench.remote import RemoteSession, check_remote, parse_target, send_artifact, send_runner

# (artifact path, runtime) -> the runner-relative argv to run for it, given the remote model path and remote temp folder
ArgvFor = Callable[[str, str, str, str], list[str]]


def run_on_pi(jobs: list[tuple[str, str]], argv_for: ArgvFor, *, host: str, identity: str | None, known_hosts: str | None,
              accept_new: bool, python: str, extra_files: dict[str, str] | None = None, timeout: float = 7200.0,
              **_: Any) -> tuple[list[tuple[int, str, str]], dict[str, Any]]:
    """``(exit code, stdout, stderr)`` per job, and the probe's view of the remote Python.

    ``argv_for(model_path, runtime, remote_model, remote_tmp)`` gives the arguments after
    ``python``; ``extra_files`` maps a local file to a name in the remote temp folder.
    """
    import edgecxr.device as device_pkg

    results: list[tuple[int, str, str]] = []
    with RemoteSession(parse_target(host), identity, known_hosts, accept_new) as s:
        tmp = s.mkdtemp()
        try:
            info = check_remote(s, python, tmp, sorted({r for _p, r in jobs}))
            send_runner(s, os.path.dirname(os.path.abspath(device_pkg.__file__)), f"{tmp}/device")
            s.mkdir(f"{tmp}/models")
            for local, name in (extra_files or {}).items():
                s.put(local, f"{tmp}/{name}")
            sent: dict[str, str] = {}
            for i, (path, runtime) in enumerate(jobs):
                if path not in sent:
                    sent[path] = send_artifact(s, path, f"{tmp}/models/{i:02d}_{os.path.basename(path)}")
                results.append(s.run([python, *argv_for(path, runtime, sent[path], tmp)], timeout=timeout))
        finally:
            s.rmtree(tmp)
    return results, info
