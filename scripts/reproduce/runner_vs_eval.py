#!/usr/bin/env python3
"""Does the Pi runner say what `edgecxr eval` says? Checked on real X-rays for all six
artifacts of a trained model, with the runner's own overhead measured beside invoke().

    .venv/bin/python scripts/reproduce/runner_vs_eval.py --checkpoint runs/mobilenet_v2/best.pt \
        --export runs/mobilenet_v2/export --out out/runner_vs_eval

For each of <arch>_{fp32,fp16,int8}.{onnx,tflite} in --export (made with
`edgecxr convert --int8 --fp16` first if missing):
  * `edgecxr eval MODEL --data D --split all` on a folder D holding one real test
    X-ray per class (the model's own test split, or --image plus one per other class);
  * `python3 device/edgecxr_runner.py --model MODEL --dir D --json` on the same files;
  * the largest probability difference per artifact (eval.json keeps 6 decimals, so
    agreement means <= 1e-6) and whether every label agrees;
  * `edgecxr_runner.py --bench --image X` for invoke() latency next to the runner's
    own decode / preprocess / quantize / postprocess time (medians, --threads).
Prints a table and writes runner_vs_eval.json beside it. Exit 1 on any disagreement.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/reproduce/ -> repo
RUNNER = os.path.join(ROOT, "device", "edgecxr_runner.py")
EDGECXR = [sys.executable, "-m", "edgecxr"]
TOL = 2e-6  # eval.json rounds to 6 decimals, the runner's JSON to 7


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"runner_vs_eval: {what} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc


def pick_images(checkpoint: str, image: str | None, folder: str, split_csv: str | None = None) -> list[str]:
    """One real X-ray per class, linked into FOLDER/<class>/ as `eval --split all` expects."""
    from edgecxr.data.folders import read_split_csv
    from edgecxr.device.contract import Contract
    from edgecxr.models.checkpoint import load_checkpoint

    contract = Contract.from_dict(load_checkpoint(checkpoint)["contract"])
    root, csv_path = contract.source.get("data_root"), split_csv or contract.source.get("split_csv")
    beside = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "split.csv")
    if not (csv_path and os.path.exists(csv_path)) and os.path.exists(beside):
        csv_path = beside  # the run folder was moved after training
    chosen: dict[str, str] = {}
    if image:
        label = os.path.basename(os.path.dirname(os.path.abspath(image)))
        if label not in contract.classes:
            sys.exit(f"runner_vs_eval: --image must sit in a class folder ({', '.join(contract.classes)}), got {label!r}")
        chosen[label] = os.path.abspath(image)
    if not (root and csv_path and os.path.exists(csv_path)):
        sys.exit("runner_vs_eval: the checkpoint does not record its data_root/split_csv; pass a checkpoint trained by edgecxr")
    index = read_split_csv(csv_path, root, list(contract.classes))
    for s in index.of_split("test"):
        chosen.setdefault(s.label, os.path.join(root, s.file))
    for label, path in chosen.items():
        os.makedirs(os.path.join(folder, label), exist_ok=True)
        os.symlink(path, os.path.join(folder, label, os.path.basename(path)))
    return [os.path.join(label, os.path.basename(p)) for label, p in sorted(chosen.items())]


def ensure_export(checkpoint: str, export: str) -> list[str]:
    from edgecxr.models.checkpoint import load_checkpoint

    arch = load_checkpoint(checkpoint)["contract"]["arch"]
    names = [f"{arch}_{p}.{f}" for f in ("onnx", "tflite") for p in ("fp32", "fp16", "int8")]
    if not all(os.path.exists(os.path.join(export, n)) for n in names):
        print(f"converting {checkpoint} -> {export} (edgecxr convert --int8 --fp16)", flush=True)
        _run([*EDGECXR, "convert", checkpoint, "--out", export, "--int8", "--fp16", "--quiet"], "edgecxr convert")
    return [os.path.join(export, n) for n in names]


def compare(model: str, folder: str, work: str, threads: int, runs: int) -> dict:
    name = os.path.basename(model)
    out = os.path.join(work, f"eval_{name}")
    _run([*EDGECXR, "eval", model, "--data", folder, "--split", "all", "--bootstrap", "0", "--out", out, "--quiet",
          "--threads", str(threads)], f"edgecxr eval {name}")
    with open(os.path.join(out, "eval.json"), encoding="utf-8") as fh:
        ev = json.load(fh)
    classes = ev["classes"]
    want = {p["file"]: p for p in ev["predictions"]}
    proc = _run([sys.executable, RUNNER, "--model", model, "--dir", folder, "--json", "--threads", str(threads),
                 "--csv", os.path.join(work, f"runner_{name}.csv")], f"runner on {name}")
    got = {r["file"]: r for r in (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))}
    if set(got) != set(want):
        sys.exit(f"runner_vs_eval: {name}: runner saw {sorted(got)}, eval saw {sorted(want)}")
    diff = max(abs(got[f]["probabilities"][c] - want[f]["probabilities"][i]) for f in got for i, c in enumerate(classes))
    agree = sum(got[f]["label"] == want[f]["pred"] for f in got)
    first = sorted(got)[0]
    bench = json.loads(_run([sys.executable, RUNNER, "--model", model, "--bench", "--image", os.path.join(folder, first),
                             "--threads", str(threads), "--warmup", "5", "--runs", str(runs)], f"runner --bench {name}").stdout)
    return {"artifact": name, "runtime": bench["runtime"], "eval_runtime": ev["runtime"], "images": len(got),
            "max_abs_prob_diff": diff, "labels_agree": agree,
            "per_image": {f: {"label": got[f]["label"], "true": want[f]["label"], "runner": got[f]["probabilities"],
                              "eval": dict(zip(classes, want[f]["probabilities"]))} for f in sorted(got)},
            "invoke_median_ms": bench["median_ms"], "invoke_p90_ms": bench["p90_ms"],
            "runner_overhead_ms": bench["runner_overhead_ms"], "device": bench["device"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="trained edgecxr checkpoint (its contract names the data and split)")
    ap.add_argument("--export", help="folder with the six converted artifacts (default: CHECKPOINT_DIR/export)")
    ap.add_argument("--split-csv", help="split.csv of the run (default: the one its contract records, else beside CHECKPOINT)")
    ap.add_argument("--image", help="a real X-ray inside a class folder to include (default: test-split images)")
    ap.add_argument("--out", default="out/runner_vs_eval", help="where to write runner_vs_eval.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=50, help="timed invoke() runs per artifact")
    a = ap.parse_args()
    export = a.export or os.path.join(os.path.dirname(os.path.abspath(a.checkpoint)), "export")
    models = ensure_export(a.checkpoint, export)
    with tempfile.TemporaryDirectory() as work:
        folder = os.path.join(work, "xrays")
        files = pick_images(a.checkpoint, a.image, folder, a.split_csv)
        print(f"images: {', '.join(files)}", flush=True)
        rows = [compare(m, folder, work, a.threads, a.runs) for m in models]
    head = (f"{'artifact':<28}{'runtime':<24}{'max|dp|':>9}{'labels':>8}{'invoke ms':>11}"
            f"{'decode':>8}{'preproc':>9}{'quant':>7}{'post':>7}{'runner':>8}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        o = r["runner_overhead_ms"]
        print(f"{r['artifact']:<28}{r['runtime']:<24}{r['max_abs_prob_diff']:>9.1e}{r['labels_agree']:>5}/{r['images']:<2}"
              f"{r['invoke_median_ms']:>11.3f}{o.get('decode_ms', 0):>8.3f}{o['preprocess_ms']:>9.3f}{o['quantize_ms']:>7.3f}"
              f"{o['postprocess_ms']:>7.3f}{o['total_ms']:>8.3f}")
    for f in rows[0]["per_image"]:
        print(f"\n{f} (true class {rows[0]['per_image'][f]['true']}): runner probabilities | eval probabilities")
        for r in rows:
            p = r["per_image"][f]
            fmt = "  ".join(f"{c} {v:.6f}" for c, v in p["runner"].items())
            ref = "  ".join(f"{v:.6f}" for v in p["eval"].values())
            print(f"  {r['artifact']:<26}{p['label']:<17}{fmt} | {ref}")
    print(f"device: {rows[0]['device']}")
    ok = all(r["max_abs_prob_diff"] <= TOL and r["labels_agree"] == r["images"] for r in rows)
    os.makedirs(a.out, exist_ok=True)
    dest = os.path.join(a.out, "runner_vs_eval.json")
    tmp = dest + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"checkpoint": os.path.abspath(a.checkpoint), "tolerance": TOL, "agree": ok, "artifacts": rows}, fh, indent=2)
    os.replace(tmp, dest)
    print(f"{'AGREE' if ok else 'DISAGREE'}: runner vs edgecxr eval, max |dp| <= {TOL:g} and same labels; wrote {dest}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
