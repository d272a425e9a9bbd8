"""Loss and accuracy curves, so a run can be judged at a glance."""
from __future__ import annotations

from edgecxr.device.atomic import atomic_path


def plot_curves(history: list[dict], path: str, title: str = "") -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [r["train_loss"] for r in history], "o-", label="train")
    a.plot(ep, [r["val_loss"] for r in history], "o-", label="val")
    a.set_xlabel("epoch"), a.set_ylabel("cross-entropy loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(ep, [r["train_acc"] for r in history], "o-", label="train accuracy")
    b.plot(ep, [r["val_acc"] for r in history], "o-", label="val accuracy")
    b.plot(ep, [r["val_macro_f1"] for r in history], "s--", label="val macro-F1")
    b.set_xlabel("epoch"), b.set_ylim(0, 1.02), b.legend(), b.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
