"""The line a user actually needs from a benchmark: which file to ship on this device.

Which artifact is fastest depends on the CPU (INT8 ran 0.52-0.60x FP32 on an AVX-512
VNNI Xeon and 1.15-1.30x FP32 on an AVX2-only EPYC), so the advice is computed per
device from the rows just measured: the fastest artifact, at the lowest thread count
measured, whose self-test did not fail and whose accuracy stays within convert's
default tolerance of its FP32 reference.
"""
from __future__ import annotations

from typing import Any

from edgecxr.device.latency import summarize


def latency_stats(row: dict[str, Any]) -> dict[str, Any]:
    runs = row.get("runs_ms") or []
    return summarize(runs) if runs else {}


def _acceptable(r: dict[str, Any]) -> bool:
    from edgecxr.eval.tolerance import MAX_DROP_PP, MIN_AGREEMENT

    if r.get("error") or not r.get("has_contract") or not latency_stats(r):
        return False
    if (r.get("selftest") or {}).get("passed") is False:
        return False
    d, agree = r.get("delta_macro_f1_pp"), r.get("top1_agreement")
    if d is None or agree is None:  # only a measured accuracy earns a recommendation
        return False
    return d >= -MAX_DROP_PP and agree >= MIN_AGREEMENT


def ship_advice(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per (device, architecture): the recommended file and how INT8 fared beside it."""
    out = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in doc["rows"]:
        groups.setdefault((r.get("device", "host"), r.get("arch", "?")), []).append(r)
    for (device, arch), rows in groups.items():
        threads = min((r["threads"] for r in rows if r.get("threads")), default=None)
        ok = [r for r in rows if r.get("threads") == threads and _acceptable(r)]
        if not ok:
            continue
        best = min(ok, key=lambda r: latency_stats(r)["median_ms"])
        fp = [r for r in ok if r.get("precision") != "int8"]
        i8 = [r for r in ok if r.get("precision") == "int8"]
        entry = {"device": device, "arch": arch, "threads": threads, "artifact": best["artifact"], "runtime": best.get("runtime"),
                 "median_ms": latency_stats(best)["median_ms"], "delta_macro_f1_pp": best.get("delta_macro_f1_pp"),
                 "device_string": best.get("device_string", "")}
        entry.update(cold_start_choice(ok, best))
        if fp and i8:
            f_best = min(latency_stats(r)["median_ms"] for r in fp)
            i_best = min(latency_stats(r)["median_ms"] for r in i8)
            entry["int8_vs_float"] = i_best / f_best
        out.append(entry)
    return out


def cold_start_choice(ok: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
    """Whether the cold start (process start to first verdict) picks another file than the steady-state median.

    A runner restarted per patient (or after every reboot) lives on its cold start; a
    runner left running lives on the median. Empty when no row measured cold starts.
    """
    timed = [r for r in ok if r.get("cold_start_median_ms") is not None]
    if not timed or best.get("cold_start_median_ms") is None:
        return {}
    first = min(timed, key=lambda r: r["cold_start_median_ms"])
    return {"cold_start_ms": best["cold_start_median_ms"], "cold_start_best": first["artifact"],
            "cold_start_best_ms": first["cold_start_median_ms"], "cold_start_best_runtime": first.get("runtime_name")}


def _cold_start_clause(e: dict[str, Any]) -> str:
    if e.get("cold_start_best") is None:
        return ""
    if e["cold_start_best"] == e["artifact"]:
        return f"; also the fastest cold start ({e['cold_start_ms']:.0f} ms to the first verdict)"
    return (f"; cold start changes the choice where the runner is started per patient: {e['cold_start_best']} "
            f"[{e.get('cold_start_best_runtime')}] gives its first verdict in {e['cold_start_best_ms']:.0f} ms "
            f"against {e['cold_start_ms']:.0f} ms")


def advice_lines(doc: dict[str, Any]) -> list[str]:
    lines = []
    for e in doc.get("advice") or ship_advice(doc):
        line = (f"on {e['device']} ship {e['artifact']} for {e['arch']}: {e['median_ms']:.2f} ms median at {e['threads']} thread(s) "
                f"[{e['runtime']}], macro-F1 {e['delta_macro_f1_pp']:+.2f} pp vs FP32")
        ratio = e.get("int8_vs_float")
        if ratio is not None:
            line += (f"; INT8 is slower here ({ratio:.2f}x the fastest float file)" if ratio > 1
                     else f"; INT8 runs at {ratio:.2f}x the fastest float file")
        line += _cold_start_clause(e)
        lines.append(line)
    return lines
