"""``edgecxr eval``: the same metrics for any model file on any split.

Which images: a model's contract records the dataset root and ``split.csv`` of the
run that trained it, so ``--split test`` means exactly the test images that run held
out, also for the ONNX and TFLite files converted from it. ``--split all`` takes
every image of a folder that was never split (a foreign test set).
"""
from __future__ import annotations

import os

import numpy as np

from edgecxr.data.folders import HOLDOUT, DatasetIndex, index_unsplit, read_split_csv
from edgecxr.device.backends import Backend
from edgecxr.device.contract import Contract
from edgecxr.device.decision import softmax
from edgecxr.errors import EdgecxrError


def resolve_samples(contract: Contract, data: str | None, split: str, split_csv: str | None = None, progress: bool = True) -> DatasetIndex:
    """The dataset index a model should be judged on; see module docstring."""
    if split not in ("train", "val", "test", "all", HOLDOUT):
        raise EdgecxrError(f"--split {split!r}: choose test, val, train, holdout or all")
    root = data or contract.source.get("data_root")
    if not root:
        raise EdgecxrError("no --data given and the model does not record its dataset; pass --data DIR")
    if not os.path.isdir(root):
        raise EdgecxrError(f"{root}: dataset folder not found; pass --data DIR")
    if split == "all":
        index = index_unsplit(root, progress=progress)
        unknown = sorted({s.label for s in index.samples} - set(contract.classes))
        if unknown:
            raise EdgecxrError(f"{root}: class folder(s) {unknown} are not among the model's classes {list(contract.classes)}")
        index.classes = list(contract.classes)
        return index
    csv_path = split_csv or contract.source.get("split_csv")
    if not csv_path or not os.path.exists(csv_path):
        raise EdgecxrError(
            f"no split.csv for --split {split} (looked for {csv_path or 'a path in the model contract'}); "
            "pass --split-csv RUN_DIR/split.csv, or --split all for a folder that was never split"
        )
    return read_split_csv(csv_path, root, list(contract.classes))


def predict_probs(backend: Backend, x: np.ndarray, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    from edgecxr.progress import progress as progress_bar

    out = []
    for i in progress_bar(range(0, len(x), batch_size), desc="inference", unit="batch", enabled=progress):
        out.append(softmax(backend.predict(x[i : i + batch_size]).astype(np.float64)))
    return np.concatenate(out)


def format_report(report: dict, title: str) -> str:
    """A plain-text table a person reads in a terminal."""
    def ci(key: str) -> str:
        lo, hi = report[f"{key}_ci95"]
        return f"{report[key]:.4f} [{lo:.4f}, {hi:.4f}]"

    lines = [title, f"images: {report['n_images']}", f"accuracy   {ci('accuracy')}",
             f"macro-F1   {ci('macro_f1')}", f"AUC macro  {ci('auc_macro')}", ""]
    head = f"{'class':<18}{'n':>5}{'precision':>11}{'recall':>9}{'F1':>8}{'sens':>8}{'spec':>8}{'AUC':>8}"
    lines += [head, "-" * len(head)]
    for name, m in report["per_class"].items():
        lines.append(f"{name:<18}{m['support']:>5}{m['precision']['value']:>11.4f}{m['recall']['value']:>9.4f}{m['f1']['value']:>8.4f}"
                     f"{m['sensitivity']['value']:>8.4f}{m['specificity']['value']:>8.4f}{m['auc']['value']:>8.4f}")
    lines += ["", "confusion matrix (rows = true, columns = predicted):"]
    names = report["classes"]
    lines.append(" " * 18 + "".join(f"{n[:10]:>11}" for n in names))
    for n, row in zip(names, report["confusion_matrix"]):
        lines.append(f"{n[:17]:<18}" + "".join(f"{v:>11}" for v in row))
    return "\n".join(lines)
