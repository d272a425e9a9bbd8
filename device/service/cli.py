"""``edgecxr_runner.py serve``: the runner as a clinic service (DICOM in, SR out, nothing lost).

    python3 edgecxr_runner.py serve --model m.tflite --port 11112 --aet EDGECXR --outbox out/ \\
        [--inbox in/] [--pacs pacs.local:104:PACS] [--state state/] [--log results.jsonl]

Start-up: open the model exactly as the runner does, run its golden-vector self-test (exit 3
when it fails: a device that computes the model wrong answers nobody), check the intended-use
block, re-queue what the journal says is unfinished, then listen. SIGTERM or Ctrl-C stop it
between images. Every argument is defined in :func:`build_parser`, the one place to add flags.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .placement import describe, pin, plan
from .process_setup import log_line, settle  # log_line: also what trust_commands logs with

EXIT_USAGE = 2
EXIT_SELFTEST_FAILED = 3
EXIT_FATAL = 4  # the classifier process died: exit so that systemd (Restart=always) starts a fresh service


class ServeError(ValueError):
    """A user-fixable problem with serve's command line or folders."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgecxr_runner.py serve",
        description="Classify chest X-rays as they arrive: a DICOM Storage SCP and/or a watched folder in, a DICOM "
                    "TID 1500 SR (or a JSON result for non-DICOM files) out, every instance journaled so none is lost "
                    "or answered twice. Needs pydicom, pynetdicom and highdicom (install.sh --service).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  %(prog)s --model m.tflite --port 11112 --aet EDGECXR --outbox results/ --pacs pacs:104:PACS\n"
               "  storescu -aec EDGECXR 127.0.0.1 11112 chest.dcm   # send it an image",
    )
    p.add_argument("--model", required=True, help="the converted model (.tflite with its .json sidecar, .onnx, ...)")
    p.add_argument("--port", type=int, help="DICOM port to listen on (the SCP is off without it)")
    p.add_argument("--aet", default="EDGECXR", help="our AE title (default EDGECXR)")
    p.add_argument("--bind", default="0.0.0.0", help="address to listen on (default all; 127.0.0.1 for local only)")
    p.add_argument("--inbox", help="a folder to watch for PNG/JPEG/DICOM files (taken when complete, then removed)")
    p.add_argument("--outbox", required=True, help="where results go: <SOPInstanceUID>.sr.dcm, or <key>.json for non-DICOM")
    p.add_argument("--state", help="journal and spool folder (default OUTBOX/.edgecxr-state); keep it on the same disk")
    p.add_argument("--pacs", metavar="HOST:PORT:AET", help="send every SR to this PACS by C-STORE (retried while it is down)")
    p.add_argument("--pacs-backoff-max", type=float, default=30.0, help="longest wait between PACS retries, s (default 30)")
    p.add_argument("--log", help="append the JSON line of every result here instead of stdout")
    p.add_argument("--poll", type=float, default=0.5, help="inbox poll interval, s (default 0.5)")
    p.add_argument("--top-k", type=int, default=3, help="classes in each JSON line's top_k (default 3)")
    p.add_argument("--queue-limit", type=int, default=1, metavar="N",
                   help="hold a C-STORE's success answer (the instance is already journaled) while more than N images "
                        "received before it are unanswered, less one for each other sender connected, so a fast sender "
                        "waits instead of its images queueing here (default 1: a lone sender keeps one image of "
                        "look-ahead; 0: until every earlier image is answered; -1 never holds)")
    p.add_argument("--threads", type=int, help="interpreter threads (default: the runtime's choice)")
    p.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                   help="run the classifier process on CPUs of its own (the last --threads CPUs), the receiver and "
                        "the writer on the others (default on where there are 2 or more CPUs; --no-pin: the kernel places them)")
    p.add_argument("--runtime", help="runtime to open the model with (see edgecxr_runner.py --list-runtimes)")
    p.add_argument("--ignore-cpu-check", action="store_true", help="open a model even where its contract says this CPU computes it wrong")
    p.add_argument("--verbose", action="store_true", help="also show pynetdicom's own log")
    p.add_argument("--http", metavar="HOST:PORT", help="also serve the clinic page here (device/page; a non-localhost address needs --token)")
    p.add_argument("--token", help="--http: the token every request must carry (required on a non-localhost address)")
    from ..trust import add_trust_arguments  # --trust, --audit-log, --device-key, --drift-window (wired in trust_commands.run_serve)

    add_trust_arguments(p)
    return p


def _check(a: argparse.Namespace) -> None:
    if a.port is None and not a.inbox:
        raise ServeError("give --port PORT (DICOM network) and/or --inbox DIR (watched folder)")
    if a.port is not None and not 0 < a.port < 65536:
        raise ServeError(f"--port {a.port}: must be 1-65535")
    if not a.aet or len(a.aet) > 16:
        raise ServeError(f"--aet {a.aet!r}: an AE title is 1 to 16 characters")
    if a.inbox and not os.path.isdir(a.inbox):
        raise ServeError(f"--inbox {a.inbox}: no such folder")
    if a.top_k < 1 or a.poll <= 0 or a.pacs_backoff_max <= 0:
        raise ServeError("--top-k, --poll and --pacs-backoff-max must be positive")


def json_sink(path: str | None) -> Callable[[dict[str, Any]], None]:
    """stdout, or a file opened for appending, one flushed line per result."""
    from ..runner_io import emit

    if not path:
        return emit
    fh = open(path, "a", encoding="utf-8")  # kept open for the process's life
    return lambda rec: emit(rec, fh)


def open_classifier(a: argparse.Namespace) -> Any:
    """The model, opened exactly as the runner opens it, and its self-test."""
    from ..backends import open_backend
    from ..classify import Classifier
    from ..runner_io import describe
    from ..selftest import run_selftest, selftest_line

    clf = Classifier(open_backend(a.model, a.threads, require_contract=True, check_cpu=not a.ignore_cpu_check,
                                  runtime=a.runtime))
    log_line(describe(clf))
    result = run_selftest(clf.backend)
    log_line(selftest_line(result))
    return clf, result.get("passed") is not False


def state_paths(a: argparse.Namespace) -> tuple[str, str, str]:
    """(state folder, spool folder, journal file)."""
    state = a.state or os.path.join(a.outbox, ".edgecxr-state")
    return state, os.path.join(state, "spool"), os.path.join(state, "journal.sqlite")


def fork_receiver(a: argparse.Namespace) -> Any:
    """The DICOM receiver process (``receiver.py``), forked before the model is opened."""
    from .receiver import Receiver

    _state, spool, journal = state_paths(a)
    return Receiver({"journal": journal, "spool": spool, "outbox": a.outbox, "aet": a.aet, "bind": a.bind,
                     "port": a.port, "queue_limit": a.queue_limit})


def fork_classifier(a: argparse.Namespace, receiver: Any, cpus: set[int] | None = None) -> Any:
    """The classifier process (``worker.py``), forked before the model is opened; it opens the
    model at once (on ``cpus`` when given), while this process opens it for the self-test and the
    SR's identification."""
    from .worker import WorkerProcess

    return WorkerProcess({"model": a.model, "threads": a.threads, "check_cpu": not a.ignore_cpu_check,
                          "runtime": a.runtime, "top_k": a.top_k, "cpus": cpus},
                         inherited=[receiver.conn] if receiver is not None else [])


def fork_children(a: argparse.Namespace) -> tuple[Any, Any]:
    """(receiver or None, classifier process), forked first: no thread and no model in a fork;
    each process pinned to its CPUs (``placement.py``) before it starts a thread."""
    receiver = fork_receiver(a) if a.port is not None else None
    placement, why = plan(a.threads, a.pin), ""
    try:
        if placement is not None:
            pin(0, placement[1])
            if receiver is not None:
                pin(receiver.proc.pid, placement[1])
    except OSError as exc:  # a container may forbid it: serve unpinned, and say so
        placement, why = None, f" (sched_setaffinity refused: {exc})"
    log_line(describe(placement) + why)
    return receiver, fork_classifier(a, receiver, placement[0] if placement else None)


def build_service(a: argparse.Namespace, clf: Any, configure: Callable[[Any], None] | None = None,
                  receiver: Any = None, remote: Any = None, identity: dict[str, Any] | None = None) -> tuple[Any, list[Callable[[], None]]]:
    """Journal, worker, PACS sender, inbox and SCP wired together; returns the service and the
    stop functions in the order to call them. With ``receiver`` (``fork_receiver``) the SCP runs
    in that process, else in this one; with ``remote`` (``fork_classifier``, ready) images are
    classified in that process, else in a thread of this one."""
    from ..intended_use import block_in_force
    from .journal import Journal
    from .service import Service

    block, origin = block_in_force(clf.decision)
    log_line(f"intended use: {len(block['rules'])} header rules ({origin}): "
             + ", ".join(r["field"] for r in block["rules"]))
    state, spool, journal_path = state_paths(a)
    for d in (a.outbox, state, spool):
        os.makedirs(d, exist_ok=True)
    journal = Journal(journal_path)
    service = Service(clf, journal, a.outbox, a.top_k, log_line, json_sink(a.log), remote=remote, identity=identity)
    stops: list[Callable[[], None]] = []
    if a.pacs:
        from .pacs import PacsSender, parse_pacs

        service.sender = PacsSender(parse_pacs(a.pacs), a.aet, journal, log_line, service.remove_spool,
                                    backoff_max=a.pacs_backoff_max)
    if configure is not None:  # listeners first: none may miss a result, resumed ones included
        configure(service)
    todo, unsent = service.resume()
    if todo or unsent:
        log_line(f"journal: {todo} received but not answered, {unsent} answered but not at the PACS: resuming them")
    service.start()
    if service.sender is not None:
        service.sender.start()
    if a.inbox:
        from .inbox import Inbox

        inbox = Inbox(a.inbox, spool, journal, service.enqueue, log_line, a.poll)
        inbox.start()
        stops.append(inbox.stop)
        log_line(f"watching {a.inbox}")
    if a.port is not None:
        stops.append(_listen(a, service, spool, receiver))
        log_line(f"listening on {a.bind}:{a.port} as AE {a.aet}" + (" (receiver process)" if receiver else ""))
    stops.append(service.stop)
    if service.sender is not None:
        stops.append(service.sender.stop)
    stops.append(journal.close)
    return service, stops


def _listen(a: argparse.Namespace, service: Any, spool: str, receiver: Any) -> Callable[[], None]:
    """Start the SCP (in ``receiver``'s process, or here); returns its stop function."""
    if receiver is not None:
        receiver.start(service.enqueue)
        return receiver.stop
    from .flow import FlowControl
    from .scp import StoreHandler, start_scp

    flow = FlowControl() if a.queue_limit >= 0 else None
    submit = (lambda e: service.enqueue(e, flow.finished)) if flow is not None else service.enqueue
    server = start_scp(a.aet, a.bind, a.port, StoreHandler(service.journal, spool, a.outbox, submit, log_line, flow,
                                                           a.queue_limit))
    return server.shutdown


def run(a: argparse.Namespace, configure: Callable[[Any], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT. ``configure(service)`` may add listeners before the first image."""
    logging.getLogger("pynetdicom").setLevel(logging.INFO if a.verbose else logging.CRITICAL)
    receiver, remote = fork_children(a)
    try:
        clf, ok = open_classifier(a)
        from .service import model_identity

        identity = model_identity(clf)  # hashes the model file once: the classifier process must have the same
        ok = remote.wait_ready(identity["model_sha256"]) and ok
        if not ok:
            log_line("self-test failed: this device does not compute the model; not serving")
            remote.abandon()
            if receiver is not None:
                receiver.stop()
            return EXIT_SELFTEST_FAILED
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        service, stops = build_service(a, clf, configure, receiver, remote, identity)
        service.on_fatal = stop.set
        if service.fatal:  # it died before the hook was in place
            stop.set()
        settle()
    except BaseException:
        remote.abandon()
        if receiver is not None:
            receiver.stop()
        raise
    log_line("ready")
    stop.wait()
    log_line(f"stopping: {service.processed} result(s) written this run; {service.journal.counts()}")
    for fn in stops:
        fn()
    if receiver is not None:
        log_line(receiver.summary)
    return EXIT_FATAL if service.fatal else 0


def main(argv: Sequence[str] | None = None, configure: Callable[[Any], None] | None = None) -> int:
    from ..backends import ModelLoadError
    from ..contract import ContractError
    from ..decision import DecisionError
    from ..intended_use import IntendedUseError
    from .pacs import PacsError

    args = build_parser().parse_args(argv)
    try:
        _check(args)
        return run(args, configure)
    except (ServeError, ModelLoadError, ContractError, DecisionError, IntendedUseError, PacsError, OSError) as exc:
        print(f"edgecxr-runner: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:
        print(f"edgecxr-runner: error: serve needs pydicom, pynetdicom and highdicom ({exc}): bash install.sh --service",
              file=sys.stderr)
        return EXIT_USAGE
