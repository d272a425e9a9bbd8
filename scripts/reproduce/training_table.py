#!/usr/bin/env python3
"""Build the README training table from the run folders' JSON files.

    python scripts/reproduce/training_table.py runs/mobilenet_v2 runs/squeezenet1_1 runs/efficientnet_lite0

Each run folder needs ``metrics.json`` (from ``edgecxr train``) and
``eval_test/eval.json`` (from ``edgecxr eval RUN/best.pt --out RUN/eval_test``).
Training time (the epochs' own time, validation excluded) adds up every stage of a run: a run started with ``--weights`` from
another run folder (progressive resizing) includes that run's time too, and a distilled run (``--teacher``) its
one pass to cache the teacher's logits (the teacher's own training is not counted). When any run was distilled, a
``teacher`` column names the teacher's run folder, the temperature and alpha of each distilled run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import date


def _load(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def epoch_seconds(run: str) -> float:
    """Sum of per-epoch training time from epochs.csv: unlike metrics.json's train_seconds,
    it also counts the epochs before a --resume."""
    import csv

    with open(os.path.join(run, "epochs.csv"), encoding="utf-8") as fh:
        return sum(float(r["seconds"]) for r in csv.DictReader(fh))


def stages(run: str) -> list[dict]:
    """This run's metrics.json and those of the runs it started from, oldest first."""
    out = []
    while run:
        m = _load(os.path.join(run, "metrics.json"))
        m["_epoch_seconds"] = epoch_seconds(run)
        out.insert(0, m)
        weights = m["config"].get("weights")
        run = os.path.dirname(weights) if weights and os.path.exists(os.path.join(os.path.dirname(weights), "metrics.json")) else ""
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def teacher(st: list[dict]) -> str:
    """The teacher of a run's distilled stages: its run folder, T and alpha ("-" when no stage was distilled)."""
    taught = sorted({(os.path.basename(os.path.dirname(s["distillation"]["teacher"]["path"])), s["distillation"]["temperature"],
                      s["distillation"]["alpha"], s["distillation"]["teacher_logits"]) for s in st if s.get("distillation")})
    return "; ".join(f"{name} (T {t:g}, alpha {a:g}, {how})" for name, t, a, how in taught) or "-"


def row(run: str, with_teacher: bool = False) -> str:
    ev = _load(os.path.join(run, "eval_test", "eval.json"))
    st = stages(run)
    seconds = sum(s["_epoch_seconds"] + (s.get("distillation") or {}).get("cache_seconds", 0.0) for s in st)
    recipe = " + ".join(f"{s['epochs_run']} ep @ {s['config']['img_size']} px{' QAT' if s['config'].get('qat') else ''}" for s in st)
    first = st[0]["config"]
    if first.get("pretrained"):
        start = "ImageNet (offline)"
    elif str(first.get("weights") or "").endswith(".tflite"):
        start = "ImageNet (from " + os.path.basename(first["weights"]) + ")"
    else:
        start = "random init"

    def ci(key: str) -> str:
        lo, hi = ev[f"{key}_ci95"]
        return f"{ev[key]:.3f} [{lo:.3f}, {hi:.3f}]"

    start += f" | {teacher(st)}" if with_teacher else ""
    return (f"| {os.path.basename(os.path.normpath(run))} | {start} | {recipe} | {seconds / 60:.1f} min | {ev['n_images']} | "
            f"{ci('accuracy')} | {ci('macro_f1')} | {ci('auc_macro')} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders")
    args = ap.parse_args(argv)
    missing = [r for r in args.runs if not os.path.exists(os.path.join(r, "eval_test", "eval.json"))]
    if missing:
        print(f"error: no eval_test/eval.json in {', '.join(missing)}; run `edgecxr eval RUN/best.pt --out RUN/eval_test`", file=sys.stderr)
        return 2
    print(f"Test split of the run, 95% bootstrap CIs (1000 resamples). Measured {date.today().isoformat()} on "
          f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}.\n")
    with_teacher = any(s.get("distillation") for r in args.runs for s in stages(r))
    print(f"| run | start |{' teacher |' if with_teacher else ''} training | train time | test images | accuracy [95% CI] | "
          "macro-F1 [95% CI] | AUC macro [95% CI] |")
    print("|---|---|" + ("---|" if with_teacher else "") + "---|---|---|---|---|---|")
    for r in args.runs:
        print(row(r, with_teacher))
    return 0


if __name__ == "__main__":
    sys.exit(main())
