"""Evaluation figures: confusion matrix, one-vs-rest ROC curves and the reliability diagram."""
from __future__ import annotations

import numpy as np

from edgecxr.device.atomic import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_confusion_matrix(cm: list[list[int]], classes: list[str], path: str, title: str = "") -> None:
    plt = _plt()
    cm_arr = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(classes), 1.2 + 1.0 * len(classes)))
    ax.imshow(cm_arr, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(cm_arr[i, j]), ha="center", va="center", color="white" if cm_arr[i, j] > cm_arr.max() / 2 else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def save_roc_curves(y: np.ndarray, probs: np.ndarray, classes: list[str], path: str, title: str = "") -> None:
    from sklearn.metrics import auc, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for c, name in enumerate(classes):
        pos = y == c
        if 0 < pos.sum() < len(y):
            fpr, tpr, _ = roc_curve(pos, probs[:, c])
            ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("1 - specificity"), ax.set_ylabel("sensitivity"), ax.set_title(title), ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def save_reliability_diagram(reliability: dict[str, list[dict]], path: str, title: str = "", temperature: float | None = None) -> None:
    """Accuracy against mean confidence per 15 equal-width bins, before and (if fitted) after
    temperature scaling; a marker's area grows with its bin's image count (near-empty bins are noise)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    styles = {"before": ("tab:red", "softmax"), "after": ("tab:blue", f"softmax / T (T={temperature:.3f})" if temperature else "after")}
    for key, bins in reliability.items():
        color, label = styles.get(key, ("gray", key))
        filled = [b for b in bins if b["count"] > 0]
        if not filled:
            continue
        total = sum(b["count"] for b in filled)
        conf = [b["confidence"] for b in filled]
        acc = [b["accuracy"] for b in filled]
        sizes = [20 + 300 * b["count"] / total for b in filled]
        ax.plot(conf, acc, "-", color=color, lw=1, alpha=0.7)
        ax.scatter(conf, acc, s=sizes, color=color, alpha=0.7, label=label)
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1.02), ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean confidence (max probability) in bin"), ax.set_ylabel("accuracy in bin")
    ax.set_title(title), ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
