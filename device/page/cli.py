"""``edgecxr_runner.py page``: the clinic page on its own (``--model`` and ``--http``), and
:func:`start`, which serves it beside ``serve`` with the service's results as a listener."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from .app import DEFAULT_LIMIT, PageServer


def log_line(message: str) -> None:
    sys.stderr.write(f"edgecxr-page: {message}\n")
    sys.stderr.flush()


def parse_http(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6), or a bare port on 127.0.0.1."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--http {value}: give HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    from ..trust import add_trust_arguments

    p = argparse.ArgumentParser(prog="edgecxr_runner.py page",
                                description="A local web page for the clinic: the model, its signature and self-test, the drift "
                                            "watch, the last decisions, and a form to classify one image. Needs starlette, "
                                            "uvicorn and python-multipart (install.sh --page).")
    p.add_argument("--model", required=True, help="the model file, as for the runner")
    p.add_argument("--http", default="127.0.0.1:8080", help="HOST:PORT to serve on (default 127.0.0.1:8080; any other host needs --token)")
    p.add_argument("--token", help="required on a non-localhost address: every request must carry it (?token=... once sets a cookie)")
    p.add_argument("--state", default="edgecxr-page", help="the page's folder (thumbnails, uploads in flight); default ./edgecxr-page")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_LIMIT / 1e6, help="largest upload (default 20 MB; larger: 413)")
    p.add_argument("--threads", type=int, help="interpreter threads")
    p.add_argument("--runtime", help="runtime to open the model with")
    add_trust_arguments(p)
    return p


def start(host: str, port: int, token: str | None, model: str, state_dir: str, session: Any = None, trust: str | None = None,
          threads: int | None = None, limit: int = DEFAULT_LIMIT, log: Any = log_line) -> tuple[PageServer, Any]:
    """The page served in a background thread; returns the server (``stop()``) and its state, whose
    ``listener(record, gray)`` a service adds to show its results."""
    from ..selftest import run_selftest
    from .model import ModelHolder
    from .state import PageState

    holder = ModelHolder(model, trust, threads, log=log)
    with holder.lock:
        selftest = run_selftest(holder.classifier().backend)
    state = PageState(holder, state_dir, session, selftest, log)
    log(state.selftest_line)
    return PageServer(state, host, port, token, limit).start(), state


def main(argv: Sequence[str] | None = None) -> int:
    from ..backends import ModelLoadError
    from ..contract import ContractError
    from ..signature import SignatureError
    from ..trust import open_session

    a = build_parser().parse_args(argv)
    try:
        host, port = parse_http(a.http)
        session = open_session(a)  # the signature, before anything opens the model
        from .model import ModelHolder
        from .state import PageState

        holder = ModelHolder(a.model, a.trust, a.threads, a.runtime, log=log_line)
        with holder.lock:
            clf = holder.classifier()
            session.attach(clf)
            from ..selftest import run_selftest

            selftest = run_selftest(clf.backend)
        state = PageState(holder, a.state, session, selftest, log_line)
        log_line(f"model {os.path.basename(a.model)}: signature {holder.status}; {state.selftest_line}")
        server = PageServer(state, host, port, a.token, int(a.max_upload_mb * 1e6))
    except (ValueError, OSError, SignatureError, ModelLoadError, ContractError) as exc:
        print(f"edgecxr-runner: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"edgecxr-runner: error: the page needs starlette, uvicorn and python-multipart ({exc}): bash install.sh --page",
              file=sys.stderr)
        return 2
    try:
        server.run()
    finally:
        session.close()
    return 0
