#!/usr/bin/env python3
"""Protonet vs supervised: the README comparison table, and the K-shot split for a supervised baseline.

    python scripts/reproduce/protonet_table.py table --runs runs [--archs mobilenet_v2,squeezenet1_1,efficientnet_lite0]
    python scripts/reproduce/protonet_table.py kshot-split SPLIT_CSV K OUT_CSV [--seed 0]

``table`` reads, per backbone, ``runs/ARCH`` (supervised, from
scripts/reproduce/train_reference_models.sh; ``--supervised ARCH=DIR`` points elsewhere), ``runs/ARCH_kshot`` (supervised on the K-shot
images), ``runs/protonet_ARCH`` and ``runs/protonet_ARCH_kshot``; each needs
``metrics.json`` and ``eval_test/eval.json``. Missing runs are listed as not run.

``kshot-split`` writes a split.csv in which only the K training images per class that
``edgecxr train --method protonet --train-shots K`` would pick keep the split "train"
(the others become "unused"), so plain supervised training sees exactly the same few
images and is judged on the same test split.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import date

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from training_table import stages

ARCHS = ("mobilenet_v2", "squeezenet1_1", "efficientnet_lite0")


def _load(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _stages(run: str) -> list[dict]:
    """metrics.json of this run and of the runs it started from (shared with training_table.py)."""
    if not os.path.exists(os.path.join(run, "metrics.json")):
        return []
    return stages(run)


def _images_per_epoch(m: dict) -> int:
    """Training images one epoch shows the network: the training split, or N x (K + Q) x episodes."""
    pc = m.get("proto_config")
    if m.get("method") == "protonet" and pc:
        return pc["episodes"] * pc["n_way"] * (pc["k_shot"] + pc["q_query"])
    return int(m["n_train"])


def _ci(ev: dict, key: str) -> str:
    lo, hi = ev[f"{key}_ci95"]
    return f"{ev[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def row(run: str, arch: str, label: str) -> str:
    ev = _load(os.path.join(run, "eval_test", "eval.json"))
    st = _stages(run)
    if ev is None or not st:
        return f"| {arch} | {label} | not run | | | | | | | |"
    last = st[-1]
    recipe = " + ".join(f"{s['epochs_run']} ep @ {s['config']['img_size']} px" for s in st)
    start = "ImageNet" if st[0]["config"].get("pretrained") else "random init"
    if last.get("method") == "protonet":
        pc = last["proto_config"]
        recipe += f", {pc['n_way']}-way {pc['k_shot']}-shot {pc['q_query']}-query x {pc['episodes']} episodes/epoch"
        te = last.get("test_episodes")
        episodes = f"{te['mean_accuracy']:.3f} [{te['accuracy_ci95'][0]:.3f}, {te['accuracy_ci95'][1]:.3f}]" if te else "-"
    else:
        episodes = "-"
    n_train = f"{last['n_train']}" + (f" ({last['n_train'] // len(last['classes'])}/class)" if last["n_train"] < 100 else "")
    minutes = sum(s["_epoch_seconds"] for s in st) / 60
    seen = sum(_images_per_epoch(s) * s["epochs_run"] for s in st) / 1000
    return (f"| {arch} | {label} | {start}; {recipe} | {n_train} | {seen:.1f} | {minutes:.1f} | {_ci(ev, 'accuracy')} | "
            f"{_ci(ev, 'macro_f1')} | {_ci(ev, 'auc_macro')} | {episodes} |")


def table(runs: str, archs: list[str], supervised: dict[str, str] | None = None) -> str:
    lines = ["| backbone | method | start; training | train images | images seen (k) | train min | test accuracy [95% CI] | "
             "test macro-F1 [95% CI] | test AUC macro [95% CI] | test-episode accuracy [95% CI] |",
             "|---|---|---|---:|---:|---:|---|---|---|---|"]
    for arch in archs:
        lines.append(row((supervised or {}).get(arch, os.path.join(runs, arch)), arch, "supervised"))
        lines.append(row(os.path.join(runs, f"protonet_{arch}"), arch, "protonet"))
        lines.append(row(os.path.join(runs, f"{arch}_kshot"), arch, "supervised, K-shot"))
        lines.append(row(os.path.join(runs, f"protonet_{arch}_kshot"), arch, "protonet, K-shot"))
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo", encoding="utf-8") if ln.startswith("model name")), platform.machine()) \
        if os.path.exists("/proc/cpuinfo") else platform.machine()
    head = (f"Whole test split of the run (the same split.csv for every row), 95% bootstrap CIs; protonet rows classify "
            f"with prototypes from their training images, folded into a linear layer. Measured {date.today().isoformat()} "
            f"on {cpu}, {os.cpu_count()} shared cores.\n")
    return head + "\n" + "\n".join(lines)


def kshot_split(split_csv: str, k: int, out_csv: str, seed: int) -> None:
    from edgecxr.data.episodes import per_class_subset
    from edgecxr.data.folders import Sample, read_split_csv, write_split_csv

    index = read_split_csv(split_csv, ".")  # only the rows are rewritten; the data root does not matter here
    keep = {s.file for s in per_class_subset(index.of_split("train"), k, seed)}
    index.samples = [s if s.split != "train" or s.file in keep else Sample(s.file, s.label, "unused", s.pixel_sha256) for s in index.samples]
    write_split_csv(out_csv, index)
    print(f"wrote {out_csv}: {len(keep)} training images ({k} per class), other training images marked unused")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table")
    t.add_argument("--runs", default="runs")
    t.add_argument("--archs", default=",".join(ARCHS))
    t.add_argument("--supervised", action="append", default=[], metavar="ARCH=RUN_DIR",
                   help="full-data supervised run folder of ARCH (default RUNS/ARCH); repeatable")
    k = sub.add_parser("kshot-split")
    k.add_argument("split_csv")
    k.add_argument("k", type=int)
    k.add_argument("out_csv")
    k.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.cmd == "table":
        sup = dict(item.split("=", 1) for item in args.supervised)
        print(table(args.runs, [a for a in args.archs.split(",") if a], sup))
    else:
        if not os.path.exists(args.split_csv):
            print(f"error: {args.split_csv} not found", file=sys.stderr)
            return 2
        kshot_split(args.split_csv, args.k, args.out_csv, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
