#!/usr/bin/env python3
"""How fast is ``edgecxr_runner.py serve`` against ``--dir`` on the same images, in the same run?

    .venv/bin/python scripts/reproduce/serve_bench.py --model runs/X/export/mobilenet_v2_int8.tflite \\
        [--images ../shared/data/covid-radiography] [--n 1000] [--associations 1 4]

Makes N DX PA adult DICOM files from the CXR PNGs (synthetic images where the folder is absent),
then (1) runs the runner with ``--dir`` on them and (2) for each association count starts the
service on 127.0.0.1, sends the N files with that many concurrent dcmtk ``storescu`` processes
and waits until the journal says every instance is answered (SR written and fsynced; no PACS,
so the numbers are the service's own), then sends 100 of them one by one at ``--paced`` per second
(the latency of an image that finds the service idle; a burst's latency is mostly queueing). Prints a table: throughput (images/s), receipt-to-SR
latency p50/p90/p99 (from the journal: receipt = the instance is on disk and journaled, before
the C-STORE is acknowledged; SR = the SR is renamed into the outbox), the ratio service/--dir,
the goals (>= 85% of --dir, p99 < 4 x one inference + 50 ms; one inference = the median
``latency_ms`` of the --dir run), the CPU with its integer features, and per row how long the
service held C-STORE answers (flow control, ``serve --queue-limit``: the sender waits with its next
image, the held one is already journaled; receipt-to-SR does not include a sender's wait, so the
held times are printed beside it).

--dir throughput counts from its first to its last result line (start-up excluded); the
service's from the first receipt to the last SR. Every DICOM set is written and synced to disk
first, and one untimed --dir run warms the caches (the first timed run otherwise paid for the
kernel writing 100 MB of fresh files back). Then --dir runs before each burst row and once after
the last (on a shared machine the load drifts during a run): each row's ratio uses the mean of the
--dir runs on either side of it (``--repeat R`` makes R passes and prints each row's median), and the table also gives the ratio against the fastest --dir run
of all (the stricter figure). Needs dcmtk (storescu). A benchmark, not a test: the numbers depend
on the machine and its load, and say so.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # the DICOM builders and process helpers the serve tests use
from dicom_fixtures import make_dataset, synthetic_gray, write  # noqa: E402
from serve_procs import RUNNER, ServeProcess, free_port, tool, wait_for  # noqa: E402


def cpu_line() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", text)
    feats = sorted(set(re.findall(r"\b(avx2|avx512f|avx512_vnni|avx_vnni|amx_int8)\b", text)))
    return f"{model.group(1) if model else platform.processor()}, {os.cpu_count()} cores, {' '.join(feats) or 'no AVX2'}"


def source_grays(folder: Path | None, n: int) -> list[np.ndarray]:
    """n grey images: the folder's PNGs (round robin over its class folders), else synthetic."""
    if folder is None or not folder.is_dir():
        return [synthetic_gray(i, 256) for i in range(n)]
    import cv2

    classes = sorted(d for d in folder.iterdir() if d.is_dir())
    lists = [sorted(d.glob("*.png")) for d in classes]
    picks = [lists[i % len(lists)][i // len(lists)] for i in range(n)]
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in picks]


def make_dicoms(grays: list[np.ndarray], out: Path, groups: int) -> list[Path]:
    """One DICOM per image, spread over ``groups`` subfolders (one per storescu)."""
    for i, g in enumerate(grays):
        write(make_dataset(g, patient_id=f"B{i % 50}"), out / f"g{i % groups}" / f"img{i:05d}.dcm")
    return sorted(out.glob("g*"))


def bench_dir(model: str, folder: Path, work: Path) -> dict:
    """The runner on the folder: throughput from its first to its last JSON line."""
    proc = subprocess.Popen([sys.executable, str(RUNNER), "--model", model, "--dir", str(folder), "--json", "--csv",
                             str(work / "dir.csv")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stamps, lat = [], []
    for line in proc.stdout:
        if line.startswith("{"):
            stamps.append(time.perf_counter())
            lat.append(json.loads(line).get("latency_ms", float("nan")))
    proc.wait()
    n = len(stamps)
    return {"n": n, "images_per_s": (n - 1) / (stamps[-1] - stamps[0]), "inference_ms": float(np.nanmedian(lat))}


def send_burst(port: int, groups: list[Path]) -> list[subprocess.Popen]:
    """Everything at once: one storescu (one association) per group folder."""
    return [subprocess.Popen([str(tool("storescu")), "-R", "-nh", "-aec", "EDGECXR", "+sd", "127.0.0.1", str(port), str(g)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for g in groups]


def send_paced(port: int, files: list[Path], rate: float) -> list[subprocess.Popen]:
    """One image per association every 1/rate s: the latency of an image that finds the service idle."""
    procs = []
    for f in files:
        t = time.perf_counter()
        procs.append(subprocess.Popen([str(tool("storescu")), "-R", "-aec", "EDGECXR", "127.0.0.1", str(port), str(f)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(max(0.0, 1.0 / rate - (time.perf_counter() - t)))
    return procs


def bench_serve(model: str, groups: list[Path], work: Path, n: int, rate: float | None = None,
                serve_args: tuple[str, ...] = ()) -> dict:
    """The service fed by storescu (a burst over len(groups) associations, or paced at ``rate``/s);
    latencies from its journal; how long the service held its answers (flow control) from its log."""
    port = free_port()
    svc = ServeProcess(work, model, port, "--log", str(work / "results.jsonl"), *serve_args)
    svc.wait_ready()
    files = sorted(f for g in groups for f in g.rglob("*.dcm"))[:n]
    senders = send_paced(port, files, rate) if rate else send_burst(port, groups)
    wait_for(lambda: svc.journal_counts().get("done", 0) >= n, 3600, f"{n} SRs", poll=0.5)
    for s in senders:
        s.wait(timeout=600)
    svc.stop()
    with sqlite3.connect(str(svc.state / "journal.sqlite")) as db:
        rows = np.array(db.execute("SELECT received_at, result_at FROM instances").fetchall(), dtype=np.float64)
    lat = (rows[:, 1] - rows[:, 0]) * 1000
    held = re.findall(r"flow control: (.*)", svc.log())
    return {"held": held[-1] if held else "not reported", "n": len(rows), "images_per_s": len(rows) / (rows[:, 1].max() - rows[:, 0].min()),
            "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)), "srs": len(list((work / "outbox").glob("*.sr.dcm")))}


def table(base: dict, runs: list[dict], model: str) -> str:
    goal_ms = 4 * base["inference_ms"] + 50
    lines = [f"model {model}; CPU {cpu_line()}; timings vary with the machine's load (printed below)",
             f"--dir: {base['n']} images, " + ", then ".join(f"{d['images_per_s']:.1f} images/s (median invoke "
                                                                f"{d['inference_ms']:.2f} ms)" for d in base["runs"])
             + f" (before each burst row and after the last); their mean {base['images_per_s']:.1f} images/s and one inference "
               f"{base['inference_ms']:.2f} ms -> p99 goal {goal_ms:.1f} ms",
             "| associations | images | SRs | images/s | service / --dir (runs beside it) | service / fastest --dir | "
             "p50 ms | p90 ms | p99 ms | >= 85% | p99 goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if r["paced"]:
            share = ("n/a", "n/a", "n/a (paced)")
        else:
            ratio, strict = r["images_per_s"] / r["dir_images_per_s"], r["images_per_s"] / base["fastest_images_per_s"]
            share = (f"{ratio:.2f}", f"{strict:.2f}", "yes" if ratio >= 0.85 else "NO")
        lines.append(f"| {r['row']} | {r['n']} | {r['srs']} | {r['images_per_s']:.1f} | {share[0]} | {share[1]} | {r['p50_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {share[2]} | {'yes' if r['p99_ms'] < goal_ms else 'NO'} |")
    lines += medians(runs, goal_ms)
    return "\n".join(lines + ["answers held by flow control (the sender waited, the image was already journaled):",
                              *(f"{r['row']}: {r['held']}" for r in runs)])


def medians(runs: list[dict], goal_ms: float) -> list[str]:
    """With --repeat: each burst row's median over the passes (one pass is one draw of the machine's noise)."""
    out = []
    for k in sorted({r["associations"] for r in runs if not r["paced"]}):
        rows = [r for r in runs if not r["paced"] and r["associations"] == k]
        if len(rows) > 1:
            ratio = float(np.median([r["images_per_s"] / r["dir_images_per_s"] for r in rows]))
            p99 = float(np.median([r["p99_ms"] for r in rows]))
            out.append(f"median of {len(rows)} passes, {k} association(s): service / --dir {ratio:.2f} "
                       f"({'>= 0.85' if ratio >= 0.85 else '< 0.85'}), p99 {p99:.1f} ms ({'<' if p99 < goal_ms else '>='} "
                       f"goal {goal_ms:.1f} ms)")
    return out


def bursts(a: argparse.Namespace, sets: dict, first: Path, work: Path) -> tuple[list[dict], list[dict]]:
    """--dir, then each burst row with --dir after it, ``--repeat`` times over: (rows, --dir runs)."""
    serve_args = tuple(a.serve_args.split())
    runs, dirs = [], [bench_dir(a.model, first, work)]
    for rep in range(a.repeat):
        for k in a.associations:
            r = bench_serve(a.model, sets[k], work / f"serve{k}_{rep}", a.n, serve_args=serve_args)
            dirs.append(bench_dir(a.model, first, work))  # again: the load drifts
            r.update(row=f"{k}" + (f" (pass {rep + 1})" if a.repeat > 1 else ""), associations=k, paced=False,
                     dir_images_per_s=float(np.mean([dirs[-2]["images_per_s"], dirs[-1]["images_per_s"]])))
            print(f"{r['row']} association(s): {r}", flush=True)
            runs.append(r)
    return runs, dirs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "covid-radiography")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeat", type=int, default=1, help="passes over the burst rows; each row's median is printed too")
    p.add_argument("--paced", type=float, default=5.0, help="then 100 images one by one at this rate (/s; 0: skip)")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--serve-args", default="", help="extra serve flags for every service row, e.g. '--queue-limit -1'")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="serve_bench_") as tmp:
        work = Path(tmp)
        grays = source_grays(a.images, a.n)
        print(f"images: {len(grays)} from {a.images if a.images.is_dir() else 'synthetic'}", flush=True)
        load = [os.getloadavg()[0]]
        sets = {k: make_dicoms(grays, work / f"dicom{k}", k) for k in a.associations}
        os.sync()
        first = work / f"dicom{a.associations[0]}"
        bench_dir(a.model, first, work)  # untimed: caches warm, the files' write-back done
        runs, dirs = bursts(a, sets, first, work)
        base = {"n": dirs[0]["n"], "runs": dirs, **{m: float(np.mean([d[m] for d in dirs])) for m in ("images_per_s", "inference_ms")},
                "fastest_images_per_s": max(d["images_per_s"] for d in dirs)}
        if a.paced:
            r = bench_serve(a.model, [first], work / "paced", min(100, a.n), a.paced, tuple(a.serve_args.split()))
            runs.append({**r, "row": f"paced {a.paced:g}/s", "paced": True})
        load.append(os.getloadavg()[0])
        print(table(base, runs, os.path.basename(a.model)))
        print(f"load average (1 min) at start {load[0]:.2f}, at end {load[1]:.2f}, on {os.cpu_count()} cores")
        if a.json:
            a.json.write_text(json.dumps({"cpu": cpu_line(), "dir": base, "serve": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
