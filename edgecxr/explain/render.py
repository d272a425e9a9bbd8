"""One PNG per explanation: the heatmap over the X-ray, and the class probabilities beside it."""
from __future__ import annotations

import numpy as np

from edgecxr.device.atomic import atomic_path


def resize_map(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a map to an image's (H, W); maps live at the model's or LIME's resolution."""
    if heat.shape == tuple(shape):
        return heat.astype(np.float32)
    import cv2

    return cv2.resize(heat.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def render_explanation(path: str, gray: np.ndarray, heat: np.ndarray, probabilities: np.ndarray, classes: list[str],
                       target: int, title: str) -> None:
    """Grad-CAM maps (0..1) use a sequential colour map; LIME's signed weights a diverging
    one centred on zero, so red always means "for this class" and blue "against"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = resize_map(heat, gray.shape)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.6), gridspec_kw={"width_ratios": [1.15, 1]})
    a.imshow(gray, cmap="gray", vmin=0, vmax=255)
    if float(h.min()) < 0:
        lim = float(np.abs(h).max()) or 1.0
        im = a.imshow(h, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.45)
        label = "LIME weight (red: for the class)"
    else:
        im = a.imshow(h, cmap="jet", vmin=0, vmax=max(float(h.max()), 1e-6), alpha=0.4)
        label = "Grad-CAM"
    fig.colorbar(im, ax=a, fraction=0.046, pad=0.02, label=label)
    a.set_axis_off()
    a.set_title(f"explained class: {classes[target]}")
    order = np.arange(len(classes))
    colors = ["tab:red" if i == target else "tab:gray" for i in order]
    b.barh(order, probabilities, color=colors)
    b.set_yticks(order, classes)
    b.invert_yaxis()
    b.set_xlim(0, 1)
    b.set_xlabel("probability")
    for i, p in enumerate(probabilities):
        b.text(min(float(p) + 0.02, 0.85), i, f"{float(p):.3f}", va="center")
    b.set_title("class probabilities")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def save_npy(path: str, heat: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, heat.astype(np.float32))
