#!/usr/bin/env python3
"""The measurements behind the distillation defaults and comparisons in the README.

    python scripts/reproduce/distill_measure.py paired runs/squeezenet1_1_plain60 runs/squeezenet1_1_kd60
        # macro-F1 change B - A on the same test images, paired bootstrap CI (RUN/eval_test/eval.json)
    python scripts/reproduce/distill_measure.py softness runs/mnv2/best.pt ../shared/data/covid-radiography runs/mnv2/split.csv
        # what the teacher says beyond the label at T = 1, 2, 4, 8 (validation split)
    python scripts/reproduce/distill_measure.py cost squeezenet1_1 128 runs/mnv2/best.pt
        # CPU seconds per batch of 32: student training step vs teacher forward (1 thread)

Process time, not wall time, for ``cost``: on a shared machine the other jobs' load
inflates wall time but not the CPU seconds this process spends.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _eval_predictions(run: str) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    with open(f"{run}/eval_test/eval.json") as f:
        d = json.load(f)
    preds = sorted(d["predictions"], key=lambda p: p["file"])
    y = np.array([d["classes"].index(p["label"]) for p in preds])
    return [p["file"] for p in preds], y, np.array([p["probabilities"] for p in preds]), len(d["classes"])


def paired(a: str, b: str) -> None:
    from edgecxr.eval.metrics import paired_delta_ci

    fa, ya, pa, k = _eval_predictions(a)
    fb, yb, pb, _ = _eval_predictions(b)
    if fa != fb or not (ya == yb).all():
        sys.exit(f"{a} and {b} were not evaluated on the same test images")
    r = paired_delta_ci(ya, pa, pb, k)
    print(f"{b} - {a}: {r['delta_pp']:+.2f} pp [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}], top-1 agreement {r['top1_agreement']:.3f}")


def softness(ckpt: str, data: str, split_csv: str) -> None:
    import torch

    from edgecxr.data.folders import read_split_csv
    from edgecxr.models.factory import load_model
    from edgecxr.train.dataset import CXRDataset

    model, contract = load_model(ckpt)
    index = read_split_csv(split_csv, data)
    ds = CXRDataset(index.root, index.of_split("val"), index.classes, contract.preprocess, None, 0, False)
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in torch.utils.data.DataLoader(ds, 64)])
    y = torch.tensor(ds.labels)
    print(f"teacher {ckpt}: val accuracy {(logits.argmax(1) == y).float().mean():.4f} on {len(y)} images")
    for t in (1, 2, 4, 8):
        p = torch.softmax(logits / t, 1)
        top = p.max(1).values
        print(f"T={t}: mean top prob {top.mean():.4f}, mean mass off the top class {1 - top.mean():.4f}, "
              f"median {float((1 - top).median()):.4f}, mean entropy {float(-(p * p.clamp_min(1e-12).log()).sum(1).mean()):.4f} nats")


def cost(arch: str, size: int, teacher_ckpt: str, n: int) -> None:
    import torch

    from edgecxr.models.factory import build_model, load_model

    torch.set_num_threads(1)
    student = build_model(arch, 3).to(memory_format=torch.channels_last).train()
    teacher, contract = load_model(teacher_ckpt)
    teacher = teacher.to(memory_format=torch.channels_last).eval()
    opt = torch.optim.Adam(student.parameters(), 1e-3)
    xs = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
    xt = torch.randn(32, 3, contract.preprocess.size, contract.preprocess.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (32,))

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(student(xs), y).backward()
        opt.step()

    def teacher_forward() -> None:
        with torch.no_grad():
            teacher(xt)

    for name, fn in (("student step", step), ("teacher forward", teacher_forward)):
        fn()
        t0, w0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            fn()
        print(f"{name}: {(time.process_time() - t0) / n:.3f} CPU s per batch of 32 ({(time.perf_counter() - w0) / n:.3f} s wall)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("paired", help="macro-F1 change B - A on the same test images")
    p.add_argument("a")
    p.add_argument("b")
    p = sub.add_parser("softness", help="teacher probability off its top class at T = 1, 2, 4, 8")
    p.add_argument("ckpt")
    p.add_argument("data")
    p.add_argument("split_csv")
    p = sub.add_parser("cost", help="CPU seconds: student training step vs teacher forward")
    p.add_argument("arch")
    p.add_argument("size", type=int)
    p.add_argument("teacher")
    p.add_argument("--batches", type=int, default=8)
    a = ap.parse_args(argv)
    if a.what == "paired":
        paired(a.a, a.b)
    elif a.what == "softness":
        softness(a.ckpt, a.data, a.split_csv)
    else:
        cost(a.arch, a.size, a.teacher, a.batches)
    return 0


if __name__ == "__main__":
    sys.exit(main())
