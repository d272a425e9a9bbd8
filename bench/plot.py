"""``bench.png``: median latency against macro-F1, marker area by file size.

The Pareto front (no other point is both faster and more accurate) is drawn as a
line through its points, which are outlined: those are the only sensible choices.
Models without accuracy (foreign files) cannot be placed on the F1 axis; they are
drawn as dotted vertical lines at their median latency so their speed still shows.
"""
from __future__ import annotations

from typing import Any

from edgecxr.bench.tables import latency_stats
from edgecxr.device.atomic import atomic_path


def markers() -> dict[str, str]:
    """Each format's marker from the formats table (the checkpoint row's included)."""
    from edgecxr.convert.formats import FORMATS

    return {f.name: f.marker for f in FORMATS}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (lower x, higher y), sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def save_plot(doc: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if not r.get("error") and latency_stats(r)]
    scored = [r for r in rows if r.get("macro_f1") is not None]
    foreign = [r for r in rows if r.get("macro_f1") is None]
    fig, ax = plt.subplots(figsize=(9, 6))
    archs = sorted({r["arch"] for r in scored})
    colors = {a: plt.cm.tab10(i % 10) for i, a in enumerate(archs)}
    pts = [(latency_stats(r)["median_ms"], r["macro_f1"]) for r in scored]
    max_size = max([r["size_bytes"] for r in rows] or [1])
    for r, (x, y) in zip(scored, pts):
        ax.scatter(x, y, s=30 + 600 * r["size_bytes"] / max_size, marker=markers().get(r["format"], "D"),
                   color=colors[r["arch"]], alpha=0.55, edgecolors="none")
        ax.annotate(f"{r['precision']} {r['threads']}t" + ("" if r.get("device", "host") == "host" else f" {r['device']}"),
                    (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = pareto_front(pts)
    if front:
        fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
        ax.step(fx, fy, where="post", color="black", lw=1, ls="--", label="Pareto front")
        ax.scatter(fx, fy, s=[30 + 600 * scored[i]["size_bytes"] / max_size for i in front], facecolors="none",
                   edgecolors="black", linewidths=1.2)
    for r in foreign:
        x = latency_stats(r)["median_ms"]
        ax.axvline(x, color="grey", ls=":", lw=1)
        ax.annotate(f"{r['artifact']} {r['threads']}t (no accuracy)", (x, 0.02), xycoords=("data", "axes fraction"),
                    rotation=90, fontsize=6, color="grey", va="bottom", ha="right")
    for a in archs:
        ax.scatter([], [], color=colors[a], label=a)
    for f, m in markers().items():
        if any(r["format"] == f for r in scored):
            ax.scatter([], [], color="grey", marker=m, label=f)
    xs = [latency_stats(r)["median_ms"] for r in rows]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 8:
        ax.set_xscale("log")
    ax.set_xlabel("median latency per image, ms (batch 1)")
    ax.set_ylabel("macro-F1")
    devices = ", ".join(sorted({r.get("device", "host") for r in rows})) or "host"
    ax.set_title(f"Latency vs macro-F1 ({devices}); marker area = file size")
    ax.grid(alpha=0.3)
    if archs or foreign:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
