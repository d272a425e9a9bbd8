#!/usr/bin/env python3
"""Where does ``serve``'s time per image go? The service in this process, fed by dcmtk ``storescu``.

    .venv/bin/python scripts/reproduce/serve_profile.py --model /tmp/m/mobilenet_v2_int8.tflite [--n 300] [--associations 1]

The service is built exactly as ``edgecxr_runner.py serve`` builds it (the receiver and classifier
processes forked first, then ``service.cli.build_service`` with the trust session's listener;
``--in-process-classifier`` classifies in a thread here instead, so its stages are timed too). This process's stages
are wrapped with timers that record wall and thread CPU time (``time.thread_time``) per call: for
a section that holds the GIL, wall minus CPU is time spent runnable but not running (GIL or a busy
core), for one that blocks in the kernel (fsync) it is the wait. Each thread's total CPU comes from
``/proc/self/task/TID/stat`` (the receiver and classifier processes: their totals only), and a sampler (every 5 ms,
``sys._current_frames``) counts which function each thread was in. Prints one table per view. A profiling
aid, not a benchmark (the timers and the sampler cost time themselves).
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "reproduce"))
from serve_bench import cpu_line, make_dicoms, send_paced, source_grays  # noqa: E402
from serve_procs import free_port, wait_for  # noqa: E402

STATS: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)


def timed(label: str, fn):
    """``fn`` wrapped: every call appends (wall ms, thread CPU ms) under ``label``."""
    def wrapper(*args, **kwargs):
        w, c = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            STATS[label].append(((time.perf_counter() - w) * 1e3, (time.thread_time() - c) * 1e3))
    return wrapper


def patch(targets: list[tuple[object, str, str]]) -> None:
    for owner, attr, label in targets:
        if hasattr(owner, attr):
            setattr(owner, attr, timed(label, getattr(owner, attr)))


def instrument() -> None:
    """Wrap the stages where they are looked up (``from x import f`` binds a name per module)."""
    from device import gated, image_io
    from device.classify import Classifier
    from device.service import journal, scp, service, sr

    patch([(scp.StoreHandler, "__call__", "scp: C-STORE handler (total)"),
           (scp, "write_durable", "scp: spool write+fsync"),
           (journal.Journal, "receive", "journal: receive commit"), (journal.Journal, "known", "journal: known?"),
           (journal.Journal, "written", "journal: written commit"), (journal.Journal, "entry", "journal: entry read"),
           (service, "classify_path", "worker: classify_path (gate+decode+model)"),
           (gated, "read_header", "worker: read_header (gate)"), (image_io, "_load_dicom", "worker: decode (dcmread+pixels)"),
           (Classifier, "tensor", "worker: preprocess"), (service.Service, "write_group", "writer: group (total, per group)"),
           (service, "read_header", "writer: read_header (SR)"), (sr, "build", "writer: SR build (template compile)")])
    from device.service import sr_template
    from device.trust import TrustSession

    patch([(sr_template.Renderer, "render", "writer: SR render (template)"), (TrustSession, "listener", "writer: trust listener (drift)"),
           (service, "write_durable_many", "writer: group's files written, fsynced, renamed, folder fsynced"),
           (service.Service, "_result_file", "writer: result read_header+render")])
    service.Service.__init__ = _with_invoke_timer(service.Service.__init__)
    for method in ("classify", "_result_file", "_announce"):  # per-image timestamps: where an image's latency goes
        setattr(service.Service, method, _stamped(method, getattr(service.Service, method)))


STAMPS: dict[str, dict[str, float]] = collections.defaultdict(dict)


def _stamped(name: str, fn):
    def wrapper(self, entry, *args):
        STAMPS[entry.key][f"{name}_start"] = time.time()
        try:
            return fn(self, entry, *args)
        finally:
            STAMPS[entry.key][f"{name}_end"] = time.time()
    return wrapper


def latency_table(journal_path: Path) -> str:
    """Per image: receipt (journal, receiver process) -> worker start -> classified -> writer start -> SR written."""
    import sqlite3

    import numpy as np
    with sqlite3.connect(str(journal_path)) as db:
        received = dict(db.execute("SELECT key, received_at FROM instances").fetchall())
    segs = {"receipt -> worker starts (pipe, queue)": ("received", "classify_start"),
            "worker: classify": ("classify_start", "classify_end"),
            "classified -> writer starts it": ("classify_end", "_result_file_start"),
            "writer: SR rendered": ("_result_file_start", "_result_file_end"),
            "-> group durable, journaled, listeners told": ("_result_file_end", "_announce_end"),
            "receipt -> SR durable, journaled, listeners told": ("received", "_announce_end")}
    lines = ["| segment | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    for label, (a, b) in segs.items():
        ms = np.array([(st[b] - (received[k] if a == "received" else st[a])) * 1e3 for k, st in STAMPS.items()
                       if k in received and b in st and (a == "received" or a in st)])
        if not ms.size:  # a stage of the classifier process: not stamped here
            continue
        lines.append(f"| {label} | " + " | ".join(f"{np.percentile(ms, q):.1f}" for q in (50, 90, 99, 100)) + " |")
    return "\n".join(lines)


def _with_invoke_timer(init):
    def wrapped(self, clf, *a, **k):
        clf.backend.invoke = timed("worker: invoke", clf.backend.invoke)
        init(self, clf, *a, **k)
    return wrapped


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread name (utime + stime from /proc)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = collections.defaultdict(float)
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), "native:" + Path(f"/proc/self/task/{tid}/comm").read_text().strip())
        out[name.split("-")[0] if name.startswith("Thread") else name] += (int(fields[11]) + int(fields[12])) / tick
    return out


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """Counts (thread name, innermost function of interest) every ``interval`` s."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(name="sampler", daemon=True)
        self.interval, self.counts, self.stop_flag = interval, collections.Counter(), threading.Event()

    def run(self) -> None:
        me = threading.get_ident()
        while not self.stop_flag.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                self.counts[(names.get(ident, "?").split("-")[0], where(frame))] += 1


def where(frame) -> str:
    """The innermost frame's module:function plus the nearest frame in device/ (the stage)."""
    leaf = f"{Path(frame.f_code.co_filename).stem}:{frame.f_code.co_name}"
    f = frame
    while f is not None and "/device/" not in f.f_code.co_filename:
        f = f.f_back
    stage = f"{Path(f.f_code.co_filename).stem}:{f.f_code.co_name}" if f is not None else "-"
    return f"{stage} <- {leaf}"


def build(model: str, work: Path, port: int, extra: list[str], in_process: bool):
    from device.service import cli
    from device.service import service as service_mod
    from device.trust import open_session

    a = cli.build_parser().parse_args(["--model", model, "--outbox", str(work / "outbox"), "--state", str(work / "state"),
                                       "--bind", "127.0.0.1", "--port", str(port), "--log", str(work / "results.jsonl"), *extra])
    if in_process:
        receiver, remote = cli.fork_receiver(a), None  # the SCP in its own process, the classifier here
    else:
        receiver, remote = cli.fork_children(a)  # as serve does
    clf, ok = cli.open_classifier(a)
    identity = service_mod.model_identity(clf)
    if remote is not None:
        remote.wait_ready(identity["model_sha256"])
    session = open_session(a)

    def configure(service) -> None:
        session.attach(service.clf)
        service.add_listener(session.listener, wants_gray=False)
    service, stops = cli.build_service(a, clf, configure, receiver, remote, identity)
    cli.settle()
    return service, stops, receiver, remote


def report(n: int, wall: float, cpu: dict[str, float], sampler: Sampler) -> None:
    print(f"{n} images in {wall:.2f} s = {n / wall:.1f} images/s; CPU {cpu_line()}")
    print("\n| stage | calls | wall ms/call | CPU ms/call | wall-CPU ms/call | wall s total |\n|---|---|---|---|---|---|")
    for label in sorted(STATS):
        arr = STATS[label]
        w, c = sum(x for x, _ in arr), sum(y for _, y in arr)
        print(f"| {label} | {len(arr)} | {w / len(arr):.2f} | {c / len(arr):.2f} | {(w - c) / len(arr):.2f} | {w / 1e3:.2f} |")
    print("\n| thread | CPU s | CPU ms per image |\n|---|---|---|")
    for name, s in sorted(cpu.items(), key=lambda kv: -kv[1]):
        if s > 0.05:
            print(f"| {name} | {s:.2f} | {s / n * 1e3:.2f} |")
    print("\n| thread | where (stage <- leaf) | samples |\n|---|---|---|")
    for (thread, loc), k in sampler.counts.most_common(40):
        print(f"| {thread} | {loc} | {k} |")


def main(argv: list[str] | None = None) -> int:
    import subprocess

    from serve_procs import tool
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "covid-radiography")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--associations", type=int, default=1)
    p.add_argument("--switch-interval", type=float, help="sys.setswitchinterval (s) for this run (default: Python's 0.005)")
    p.add_argument("--serve-args", default="", help="extra serve flags, e.g. '--queue-limit -1'")
    p.add_argument("--paced", type=float, help="send the images one association each at this rate (/s) instead of a burst")
    p.add_argument("--in-process-classifier", action="store_true",
                   help="classify in a thread of this process (its stages are then timed) instead of serve's classifier process")
    a = p.parse_args(argv)
    if a.switch_interval:
        sys.setswitchinterval(a.switch_interval)
    instrument()
    with tempfile.TemporaryDirectory(prefix="serve_profile_") as tmp:
        work, port = Path(tmp), free_port()
        groups = make_dicoms(source_grays(a.images, a.n), work / "dicom", a.associations)
        service, stops, receiver, remote = build(a.model, work, port, a.serve_args.split(), a.in_process_classifier)
        children = {"receiver process": receiver.proc.pid, **({"classifier process": remote.proc.pid} if remote else {})}
        cpu0, proc0, sampler = thread_cpu(), os.times(), Sampler()
        child0 = {k: process_cpu(pid) for k, pid in children.items()}
        sampler.start()
        t = time.perf_counter()
        if a.paced:
            senders = send_paced(port, sorted(f for g in groups for f in g.rglob("*.dcm")), a.paced)
        else:
            senders = [subprocess.Popen([str(tool("storescu")), "-R", "-nh", "-aec", "EDGECXR", "+sd", "127.0.0.1", str(port),
                                         str(g)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for g in groups]
        wait_for(lambda: service.journal.counts()["done"] >= a.n, 3600, f"{a.n} results", poll=0.05)
        wall = time.perf_counter() - t
        sampler.stop_flag.set()
        cpu = {k: v - cpu0.get(k, 0.0) for k, v in thread_cpu().items()}
        for s in senders:
            s.wait(timeout=60)
        proc1 = os.times()
        cpu["whole process (all threads, ended ones too)"] = proc1.user + proc1.system - proc0.user - proc0.system
        cpu["storescu (children)"] = proc1.children_user + proc1.children_system - proc0.children_user - proc0.children_system
        cpu.update({k: process_cpu(pid) - child0[k] for k, pid in children.items()})
        for fn in stops:
            fn()
        report(a.n, wall, cpu, sampler)
        print("\n" + latency_table(work / "state" / "journal.sqlite"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
