"""``edgecxr_runner.py verify-audit``, ``device-keygen`` and ``page``: the trust commands, dispatched
by the runner before its own argument parsing (apart from ``trust.py``, which ``page`` imports)."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .signature import TrustError

TRUST_COMMANDS = ("verify-audit", "device-keygen", "page")


def _verify_audit(argv: Sequence[str]) -> int:
    from .audit_verify import OK, verify_log

    p = argparse.ArgumentParser(prog="edgecxr_runner.py verify-audit",
                                description="Check an audit log offline: names the first edited, inserted, deleted or moved line, "
                                            "and a log cut off after its last signed checkpoint. Exit 0: intact and closed; 1: not.")
    p.add_argument("log")
    p.add_argument("--trust", required=True, metavar="DEVICE_PUBKEY", help="the device's device_ed25519.pub")
    a = p.parse_args(argv)
    if not os.path.isfile(a.log):
        raise TrustError(f"{a.log}: no such audit log")
    rep = verify_log(a.log, a.trust)
    for line in rep.text():
        print(line)
    return 0 if rep.status == OK else 1


def _device_keygen(argv: Sequence[str]) -> int:
    from .audit import device_keygen

    p = argparse.ArgumentParser(prog="edgecxr_runner.py device-keygen",
                                description="Make this device's ed25519 key, which signs its audit log's checkpoints (once, at install).")
    p.add_argument("--out", required=True, help="folder for device_ed25519.key (private, 0600) and device_ed25519.pub")
    a = p.parse_args(argv)
    priv, pub = device_keygen(a.out)
    print(f"wrote {priv} (stays on the device) and {pub} (copy it off the device: verify-audit --trust needs it)")
    return 0


def run_trust_command(argv: Sequence[str]) -> int:
    """``verify-audit``, ``device-keygen`` or ``page``; one line and exit 2 for what the user can fix."""
    name, rest = argv[0], list(argv[1:])
    try:
        if name == "verify-audit":
            return _verify_audit(rest)
        if name == "device-keygen":
            return _device_keygen(rest)
        from .page.cli import main as page_main

        return page_main(rest)
    except (TrustError, OSError) as exc:
        print(f"edgecxr-runner: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


def run_serve(argv: Sequence[str]) -> int:
    """``serve`` with the trust options: the signature checked before the service opens the model,
    then the audit log, the drift watch and (``--http``) the page added as the service's result listeners."""
    from .service.cli import build_parser, log_line
    from .service.cli import main as serve_main
    from .trust import open_session

    a, _unknown = build_parser().parse_known_args(argv)  # serve's own main reports what is wrong with the rest
    try:
        http = None
        if a.http:
            from .page.app import is_loopback
            from .page.cli import parse_http

            http = parse_http(a.http)
            if not is_loopback(http[0]) and not a.token:
                raise TrustError(f"--http {a.http} is not localhost: give --token TOKEN (every request must then carry it)")
        session = open_session(a)  # before serve opens the model
    except (ValueError, OSError) as exc:  # TrustError included
        print(f"edgecxr-runner: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2

    def configure(service: object) -> None:
        session.attach(service.clf)
        log_line(f"signature: {session.status}" + (f"; audit log {a.audit_log}" if a.audit_log else ""))
        service.add_listener(session.listener, wants_gray=False)  # audit and drift read the record only
        if http is not None:
            from .page.cli import start

            state_dir = os.path.join(a.state or os.path.join(a.outbox, ".edgecxr-state"), "page")
            _server, page = start(http[0], http[1], a.token, a.model, state_dir, session, a.trust, a.threads, log=log_line)
            service.add_listener(page.listener)

    return serve_main(argv, configure)
