"""Assemble ``bench.json``: one row per (artifact, device, thread count), and write the outputs.

Accuracy is a property of the file and its runtime, not of the machine, so it is
computed once per artifact on this machine's full evaluation split and repeated on
every row of that artifact (Pi rows included, with the Pi's own top-1 agreement on
the images it was sent as the check that the Pi computes the same thing).
"""
from __future__ import annotations

import os
import time
from typing import Any

from edgecxr.bench.artifacts import Artifact, assign_references, collect, describe, sort_key
from edgecxr.bench.evaldata import EvalCache
from edgecxr.bench.graphstats import graph_stats
from edgecxr.bench.local import (
    Evaluated,
    Key,
    RecordKey,
    Settings,
    accuracy_columns,
    default_runtime,
    measure_all,
    predict_only,
    selected_runtimes,
)
from edgecxr.convert.formats import format_of

SCHEMA = "edgecxr.bench/1"


def _progress_bar(total: int, enabled: bool):
    from edgecxr.progress import progress

    return progress(total=total, desc="bench", unit="run", enabled=enabled)


def base_row(a: Artifact, stats: dict[str, Any]) -> dict[str, Any]:
    precision = a.precision if a.precision != "?" else stats.get("weight_precision", "?")
    note = None
    if a.contract is None:
        note = "no contract: foreign model, latency and size only" + (f" ({a.contract_error})" if a.contract_error else "")
    row = format_of(a.path)
    source = a.path if (row is not None and row.source) else (a.contract.source.get("checkpoint") if a.contract is not None else None)
    return {"artifact": a.name, "path": a.path, "arch": a.arch, "format": a.format, "precision": precision,
            "source_checkpoint": source, "has_contract": a.has_contract, "size_bytes": a.size_bytes, "params": stats.get("params"),
            "macs": stats.get("macs"), "stats_from": stats.get("stats_from"), "note": note}


def latency_fields(rec: dict[str, Any]) -> dict[str, Any]:
    keep = ("runtime", "threads", "warmup", "load_ms", "peak_rss_mb", "rss_before_load_mb", "latency_input",
            "runs_ms", "n_runs", "median_ms", "mean_ms", "std_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "pid", "error", "selftest")
    return {k: rec[k] for k in keep if k in rec}


def build_document(*, paths: list[str], data: str | None, split: str, split_csv: str | None, settings: dict[str, Any], reference: str | None,
                   local: bool, local_label: str, remote: dict[str, Any] | None, workdir: str, progress: bool) -> dict[str, Any]:
    """Measure every (artifact, runtime, threads) here and/or on the Pi, and assemble bench.json."""
    from edgecxr import __version__
    from edgecxr.bench.advice import ship_advice

    artifacts = sorted(collect(paths), key=sort_key)
    ref_art: Artifact | None = None
    if reference:
        ref_art = next((a for a in artifacts if os.path.realpath(a.path) == os.path.realpath(reference)), None) or describe(reference)
    assign_references(artifacts, ref_art)
    stats = {a.path: graph_stats(a.path) for a in artifacts}
    s = Settings(threads=settings["threads"], warmup=settings["warmup"], runs=settings["runs"], min_seconds=settings["min_seconds"],
                 bootstrap=settings["bootstrap"], runtimes=tuple(settings.get("runtimes") or ()))
    cache = EvalCache(workdir, data, split, progress=progress, split_csv=split_csv)
    records: dict[RecordKey, dict[str, Any]] = {}
    evaluated: dict[Key, Evaluated] = {}
    if local:
        total = sum(len(selected_runtimes(a.path, s.runtimes)) for a in artifacts) * len(s.threads)
        bar = _progress_bar(total, progress)
        records, evaluated = measure_all(artifacts, s, cache, workdir, progress=lambda _msg: bar.update(1))
        bar.close()
    acc = _accuracy(artifacts, ref_art, evaluated, cache, workdir, s)
    rows: list[dict[str, Any]] = []
    devices: dict[str, Any] = {}
    if local:
        rows += _local_rows(artifacts, stats, acc, records, s, local_label, devices)
    if remote is not None:
        rows += _remote_rows(artifacts, stats, acc, evaluated, s, workdir, progress, remote, devices)
    doc = {
        "schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "edgecxr": __version__, "settings": settings,
        "devices": devices, "rows": rows,
        "artifacts": [{"artifact": a.name, "path": a.path, "files": a.files, "reference": a.reference.path if a.reference else None,
                       "contract_error": a.contract_error, **stats[a.path]} for a in artifacts],
    }
    doc["advice"] = ship_advice(doc)
    return doc


def _accuracy(artifacts: list[Artifact], ref_art: Artifact | None, evaluated: dict[Key, Evaluated], cache: EvalCache, workdir: str,
              s: Settings) -> dict[Key, dict[str, Any]]:
    """Accuracy columns per (artifact, runtime), each against its FP32 reference on its default runtime."""
    def default_key(a: Artifact) -> Key:
        return (a.path, default_runtime(a.path))

    keys = {k for k in evaluated} | {default_key(a) for a in artifacts}
    for a in [*artifacts, *([ref_art] if ref_art else []), *[a.reference for a in artifacts if a.reference is not None]]:
        if default_key(a) not in evaluated:
            evaluated[default_key(a)] = predict_only(a, cache, workdir, s.threads[0])
    by_path = {a.path: a for a in artifacts}
    out = {}
    for path, runtime in keys:
        a = by_path[path]
        ref = evaluated.get(default_key(a.reference)) if a.reference else None
        out[(path, runtime)] = accuracy_columns(a, evaluated.get((path, runtime)) or evaluated[default_key(a)], ref, s.bootstrap)
    return out


def _local_rows(artifacts: list[Artifact], stats: dict[str, Any], acc: dict[Key, dict[str, Any]], records: dict[RecordKey, dict[str, Any]],
                s: Settings, label: str, devices: dict[str, Any]) -> list[dict[str, Any]]:
    from edgecxr.device.sysinfo import device_info, device_string

    info = device_info()
    devices[label] = {**info, "summary": device_string(info=info)}
    rows = []
    for a in artifacts:
        for runtime in selected_runtimes(a.path, s.runtimes):
            for t in s.threads:
                rec = records[(a.path, runtime, t)]
                row = {**base_row(a, stats[a.path]), "device": label, "runtime_name": runtime, **acc[(a.path, runtime)], **latency_fields(rec),
                       "threads": t}  # also on an error row, whose record has no timing
                row["device_string"] = device_string(info={**info, "runtime": rec.get("runtime") or ""})
                row["cpu_int8_features"], row["cpu_int8_target"] = info.get("int8_features"), info.get("int8_target")
                rows.append(row)
    return rows


def _remote_rows(artifacts: list[Artifact], stats: dict[str, Any], acc: dict[Key, dict[str, Any]], evaluated: dict[Key, Evaluated],
                 s: Settings, workdir: str, progress: bool, remote: dict[str, Any], devices: dict[str, Any]) -> list[dict[str, Any]]:
    from edgecxr.bench.remote import run_remote
    from edgecxr.device.sysinfo import device_string

    remote_doc = run_remote(artifacts, evaluated, s, workdir=workdir, progress=progress, **remote)
    info = remote_doc["device"]
    devices["rpi"] = {**info, "runtime": "", "summary": device_string(info={**info, "runtime": ""})}
    rows = []
    for (path, runtime, t), rec in remote_doc["records"].items():
        a = next(x for x in artifacts if x.path == path)
        columns = acc.get((path, runtime)) or acc.get((path, default_runtime(path))) or {}
        row = {**base_row(a, stats[path]), "device": "rpi (EMULATED)" if info.get("emulated") else "rpi", "runtime_name": runtime,
               **columns, **latency_fields(rec), "threads": t}
        row["device_string"] = device_string(info={**info, "runtime": rec.get("runtime") or ""})
        row["cpu_int8_features"], row["cpu_int8_target"] = info.get("int8_features"), info.get("int8_target")
        if rec.get("host_agreement") is not None:
            row["pi_host_top1_agreement"] = rec["host_agreement"]
            row["note"] = (f"accuracy from the host run of the same file; Pi and host top-1 agree on "
                           f"{rec['host_agreement']:.0%} of {rec.get('agreement_images')} images sent to the Pi")
        if columns.get("macro_f1") is not None:
            row["accuracy_from"] = "host evaluation of the same file"
        if rec.get("skip"):
            row["note"] = row["skipped"] = rec["skip"]
        rows.append(row)
    order = {(a.path): i for i, a in enumerate(artifacts)}
    rows.sort(key=lambda r: (order[r["path"]], r["runtime_name"], r["threads"]))
    return rows


def write_outputs(doc: dict[str, Any], out: str, columns: str = "compact") -> list[str]:
    """bench.json and bench.csv with everything; bench.md with the ``columns`` asked for; the plot."""
    from edgecxr.bench.plot import save_plot
    from edgecxr.bench.tables import csv_text, markdown
    from edgecxr.decide.report import bench_markdown
    from edgecxr.device.atomic import write_json, write_text

    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, n) for n in ("bench.json", "bench.csv", "bench.md", "bench.png")]
    write_json(paths[0], doc)
    write_text(paths[1], csv_text(doc))
    write_text(paths[2], markdown(doc, columns) + "\n" + bench_markdown(doc["rows"]))
    save_plot(doc, paths[3])
    return paths
