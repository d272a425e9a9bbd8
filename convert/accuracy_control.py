"""INT8 with accuracy control: return the most harmful layers to float until the file holds a limit.

``edgecxr convert --int8 --max-drop PP --accuracy-control`` quantizes as usual, then
judges the INT8 model against the checkpoint on a *held-out slice of the training
split* (:func:`holdout_slice`: train rows of ``split.csv`` not used for calibration,
never an image of the test split, whose verification stays an independent measure).
When the macro-F1 drop exceeds ``--max-drop`` or top-1 agreement falls under
``--min-agreement``, layers go back to float one at a time, worst first, until both
hold or ``--max-float-layers`` layers are spent.

"Worst" is measured, not guessed (:func:`search`): every quantized layer is
requantized alone in float and the held-out mean KL divergence from the checkpoint's
softmax is compared with plain INT8's. That gain is a continuous signal on a few
hundred images, where flips are too rare to rank by; a per-tensor error
(``debug-quant``'s SQNR) ranks layers whose error the next layers absorb as highly
as the ones that change predictions.

The judgement uses every held-out image (1000 by default: at a 0.3-point limit one
flip in 300 is already 0.33 points, so 300 images cannot tell a 1% flip rate from
none); the ranking uses the 300 of them whose probabilities plain INT8 moves most,
where restoring a layer can show.

The search only needs ``evaluate(keep_float, stem, rows) -> (logits, file)`` from a format, so
the same code runs for ONNX (``formats/onnx/accuracy_control.py``, ORT ``nodes_to_exclude``)
and, inside the TensorFlow child process, for TFLite (``formats/tflite/accuracy_control.py``,
the MLIR quantizer's ``denylisted_nodes``). This module imports neither runtime.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgecxr.device.decision import softmax
from edgecxr.errors import EdgecxrError

DEFAULT_MIN_AGREEMENT = 0.99
DEFAULT_MAX_FLOAT_LAYERS = 8
DEFAULT_HOLDOUT_N = 1000
RANK_IMAGES = 300  # layers are ranked on the held-out images plain INT8 moves most (per-image KL)
DEFAULT_LATENCY_RUNS = 50
HOLDOUT_SEED = 1  # calibration draws with seed 0; a different seed, and calibration files are excluded anyway
MIN_HOLDOUT = 16

Echo = Callable[[str], None]
# (keep_float, file stem to keep or None, rows of the held-out set or None for all) -> (logits, file)
Evaluate = Callable[[list[str], str | None, np.ndarray | None], tuple[np.ndarray, str]]


@dataclass(frozen=True)
class ControlSettings:
    """The limit an INT8 file must hold on the held-out slice, and what the search may spend."""

    max_drop_pp: float
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    max_float_layers: int = DEFAULT_MAX_FLOAT_LAYERS
    holdout_n: int = DEFAULT_HOLDOUT_N
    latency_runs: int = DEFAULT_LATENCY_RUNS  # 0: do not benchmark the steps
    latency_threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_settings(s: ControlSettings) -> None:
    if not 0.0 <= s.min_agreement <= 1.0:
        raise EdgecxrError(f"--min-agreement must be a fraction in [0, 1], got {s.min_agreement}")
    if s.max_float_layers < 0:
        raise EdgecxrError(f"--max-float-layers must be >= 0, got {s.max_float_layers}")
    if s.holdout_n < MIN_HOLDOUT:
        raise EdgecxrError(f"--control-n must be at least {MIN_HOLDOUT}, got {s.holdout_n}")


# --- the held-out slice ---------------------------------------------------------------------

def _gray_key(gray: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(gray).tobytes()).hexdigest()


def holdout_samples(split_csv: str, root: str, classes: list[str], exclude_files: set[str], n: int,
                    seed: int = HOLDOUT_SEED) -> tuple[Any, list[Any]]:
    """(index, samples): ``n`` train rows of ``split_csv``, stratified, none of ``exclude_files``
    (absolute paths: the calibration images) and none whose pixels occur outside the train split."""
    from edgecxr.convert.calibration import _stratified
    from edgecxr.data.folders import read_split_csv

    index = read_split_csv(split_csv, root, classes)
    elsewhere = {s.pixel_sha256 for s in index.samples if s.split != "train" and s.pixel_sha256}
    pool = [s for s in index.of_split("train")
            if os.path.abspath(os.path.join(index.root, s.file)) not in exclude_files and s.pixel_sha256 not in elsewhere]
    if len(pool) < MIN_HOLDOUT:
        raise EdgecxrError(f"--accuracy-control: only {len(pool)} train images of {split_csv} are left after calibration "
                           f"(at least {MIN_HOLDOUT} needed); lower --calib-n")
    return index, _stratified(pool, n, seed)


def holdout_slice(contract: Any, calib: Any, vset: Any, n: int, seed: int = HOLDOUT_SEED, progress: bool = True) -> Any:
    """The images accuracy control judges INT8 on: never calibration images, never test images.

    The train rows come from the checkpoint's ``split.csv``; rows whose pixels also
    appear in another split are dropped, and so is any image identical, after
    preprocessing, to a verification image (``--verify-data`` may point anywhere).
    """
    from edgecxr.data.imageset import LabelledImages, load_images

    split_csv, root = contract.source.get("split_csv"), contract.source.get("data_root")
    if not split_csv or not root or not os.path.exists(split_csv) or not os.path.isdir(root):
        raise EdgecxrError("--accuracy-control judges INT8 on held-out training images and needs the training split "
                           "the checkpoint records (split.csv and its data folder); pass --split-csv, or drop --accuracy-control")
    exclude = {os.path.abspath(p) for p in calib.image_paths} if calib is not None else set()
    if vset is not None:
        exclude |= {os.path.abspath(p) for p in vset.image_paths}
    index, samples = holdout_samples(split_csv, root, list(contract.classes), exclude, n, seed)
    origin = f"a held-out slice of the train split of {split_csv} (seed {seed}, disjoint from calibration and test)"
    imgs = load_images(index, samples, contract.preprocess, origin, progress=progress, desc="held-out images")
    if vset is not None:  # the same picture under another name is still a verification image
        seen = {_gray_key(g) for g in vset.gray}
        keep = [i for i, g in enumerate(imgs.gray) if _gray_key(g) not in seen]
        if len(keep) < len(imgs):
            imgs = LabelledImages(imgs.gray[keep], imgs.y[keep], [imgs.files[i] for i in keep], imgs.classes, imgs.root,
                                  imgs.spec, origin, imgs.skipped)
    if len(imgs) < MIN_HOLDOUT:
        raise EdgecxrError(f"--accuracy-control: only {len(imgs)} readable held-out images (at least {MIN_HOLDOUT} needed)")
    return imgs


# --- judging and the search -----------------------------------------------------------------

def per_image_kl(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(checkpoint || INT8) of each image: how far INT8 moved its probabilities, in nats."""
    p, q = softmax(ref_logits), softmax(logits)
    return np.sum(p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(q, 1e-12, None))), axis=1)


def mean_kl(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    return float(np.mean(per_image_kl(ref_logits, logits)))


def judge(ref_logits: np.ndarray, logits: np.ndarray, y: np.ndarray, classes: list[str], s: ControlSettings) -> dict[str, Any]:
    """Held-out numbers of one INT8 model and whether it holds the limit."""
    from edgecxr.eval.metrics import compare_to_reference

    k = len(classes)
    c = compare_to_reference(np.asarray(y, dtype=int), softmax(ref_logits), softmax(logits), k, n_boot=200)
    holds = c["delta_macro_f1_pp"] >= -s.max_drop_pp and c["top1_agreement"] >= s.min_agreement
    return {"delta_macro_f1_pp": c["delta_macro_f1_pp"], "delta_macro_f1_ci95": c["delta_macro_f1_ci95"],
            "top1_agreement": c["top1_agreement"], "kl": mean_kl(ref_logits, logits), "holds": bool(holds)}


def describe(j: dict[str, Any]) -> str:
    return f"agreement {100 * j['top1_agreement']:.1f}%, macro-F1 {j['delta_macro_f1_pp']:+.2f} pp, KL {j['kl']:.2e}"


def search(evaluate: Evaluate, layers_of: Callable[[str], list[tuple[str, str]]], ref_logits: np.ndarray, y: np.ndarray, classes: list[str],
           s: ControlSettings, echo: Echo, label: str, base_keep: list[str] | None = None) -> dict[str, Any]:
    """Greedy float restoration; returns the record the report shows (``keep_float``: the final set).

    ``layers_of(plain_file)``: (layer name, op type) of every quantized layer. ``base_keep``: layers
    the user already keeps in float (``--keep-float``); they stay and do not count
    against the budget. ``evaluate(keep_float, stem, rows)`` writes the model it judged
    to a file named after ``stem`` that the step keeps for benchmarking (``None``: a
    scratch file the next call may overwrite) and returns its logits on the held-out
    ``rows`` (``None``: all of them).
    """
    base = list(base_keep or [])
    t0 = time.perf_counter()
    logits, path = evaluate(base, "step0", None)
    plain = judge(ref_logits, logits, y, classes, s)
    echo(f"  control {label}: plain INT8 on {len(y)} held-out images: {describe(plain)}" + (" (holds)" if plain["holds"] else ""))
    steps = [{"added": None, "op_type": None, "keep_float": list(base), "heldout": plain, "file": path}]
    ranking: list[dict[str, Any]] = []
    if not plain["holds"] and s.max_float_layers > 0:
        rows = np.sort(np.argsort(-per_image_kl(ref_logits, logits))[:RANK_IMAGES])
        ref_rows = ref_logits[rows]
        plain_kl = mean_kl(ref_rows, logits[rows])
        for name, op in layers_of(path):
            if name in base:
                continue
            lg, _ = evaluate(base + [name], None, rows)
            kl = mean_kl(ref_rows, lg)
            flips = int(np.sum(lg.argmax(1) != ref_rows.argmax(1)))
            ranking.append({"layer": name, "op_type": op, "kl": kl, "gain": plain_kl - kl, "flips": flips})
        ranking.sort(key=lambda r: (-r["gain"], r["flips"]))
        echo(f"  control {label}: measured {len(ranking)} layers in float one at a time on the {len(rows)} images INT8 moves most; worst: "
             + ", ".join(f"{r['layer']} ({r['gain']:.1e})" for r in ranking[:3]))
        keep = list(base)
        for r in [r for r in ranking if r["gain"] > 0][: s.max_float_layers]:
            keep.append(r["layer"])
            logits, path = evaluate(keep, f"step{len(steps)}", None)
            j = judge(ref_logits, logits, y, classes, s)
            steps.append({"added": r["layer"], "op_type": r["op_type"], "keep_float": list(keep), "heldout": j, "file": path})
            echo(f"  control {label}: + {r['layer']} ({r['op_type']}): {describe(j)}" + (" (holds)" if j["holds"] else ""))
            if j["holds"]:
                break
    final = steps[-1]
    passed = bool(final["heldout"]["holds"])
    added = [st["added"] for st in steps[1:]]
    if passed:
        message = f"{label}: holds on the held-out slice with {len(added)} layer(s) in float"
    else:
        message = (f"{label}: cannot meet --max-drop {s.max_drop_pp:g} / --min-agreement {s.min_agreement:g} on the held-out "
                   f"slice with {len(added)} layer(s) in float (--max-float-layers {s.max_float_layers}): {describe(final['heldout'])}")
    return {"format": label, "settings": s.to_dict(), "holdout_images": int(len(y)), "plain": plain, "ranking": ranking,
            "steps": steps, "keep_float": final["keep_float"], "added": added, "passed": passed, "message": message,
            "seconds": round(time.perf_counter() - t0, 1)}


# --- latency of each step ---------------------------------------------------------------------

def bench_steps(record: dict[str, Any], workdir: str, echo: Echo) -> None:
    """Median latency of every step's file (bench's own measurement process and protocol),
    and what each added float layer cost against the step before it. Files are dropped
    from the record afterwards: they live in a work folder that is about to go."""
    from edgecxr.eval.measure import run_in_subprocess

    s = record["settings"]
    prev = None
    for i, st in enumerate(record["steps"]):
        path = st.pop("file", None)
        if not s["latency_runs"] or not path or not os.path.exists(path):
            continue
        res = run_in_subprocess(path, s["latency_threads"], os.path.join(workdir, f"lat_{i}.json"), warmup=10,
                                runs=s["latency_runs"], min_seconds=0.0)
        if "error" in res:
            st["latency_error"] = res["error"]
            continue
        st["median_ms"] = round(float(res["median_ms"]), 4)
        st["latency_cost_ms"] = None if prev is None else round(st["median_ms"] - prev, 4)
        prev = st["median_ms"]
    if record["steps"] and "median_ms" in record["steps"][-1] and "median_ms" in record["steps"][0]:
        first, last = record["steps"][0]["median_ms"], record["steps"][-1]["median_ms"]
        record["latency"] = {"threads": s["latency_threads"], "runs": s["latency_runs"], "plain_ms": first, "final_ms": last,
                             "cost_ms": round(last - first, 4)}
        echo(f"  control {record['format']}: latency {first:.2f} -> {last:.2f} ms ({s['latency_threads']} thread(s), "
             f"median of {s['latency_runs']})")


# --- what convert needs ------------------------------------------------------------------------

@dataclass
class ControlJob:
    """Accuracy control for one conversion: the limit, the held-out images and the checkpoint's logits on them."""

    settings: ControlSettings
    holdout: Any  # imageset.LabelledImages
    ref_logits: np.ndarray

    def describe(self) -> dict[str, Any]:
        return {"settings": self.settings.to_dict(), "holdout": self.holdout.to_dict()}


def prepare(torch_model: Any, contract: Any, calib: Any, vset: Any, settings: ControlSettings, progress: bool, echo: Echo) -> ControlJob:
    from edgecxr.convert.reference import torch_logits

    check_settings(settings)
    holdout = holdout_slice(contract, calib, vset, settings.holdout_n, progress=progress)
    echo(f"accuracy control: {holdout.describe()}; limit macro-F1 drop <= {settings.max_drop_pp:g} pp and agreement >= "
         f"{100 * settings.min_agreement:g}%, at most {settings.max_float_layers} layer(s) back to float")
    return ControlJob(settings, holdout, torch_logits(torch_model, holdout.x))


def failures(report: dict[str, Any]) -> list[str]:
    """One line per INT8 artifact whose accuracy control could not meet its limit."""
    out = []
    for a in report.get("artifacts", []):
        rec = (a.get("details") or {}).get("accuracy_control")
        if rec and not rec["passed"]:
            out.append(f"{a['file']}: {rec['message']}")
    return out


def report_lines(report: dict[str, Any]) -> list[str]:
    """Markdown for the convert report: per INT8 file, the layers kept in float with their
    held-out effect and latency cost, and the final drop on the test split (its CI)."""
    out: list[str] = []
    for a in report.get("artifacts", []):
        rec = (a.get("details") or {}).get("accuracy_control")
        if not rec:
            continue
        s = rec["settings"]
        hold = rec.get("holdout") or {}
        out += [f"## Accuracy control: {a['file']}", "",
                f"- limit: macro-F1 drop <= {s['max_drop_pp']:g} pp and top-1 agreement >= {100 * s['min_agreement']:g}% on "
                f"{rec['holdout_images']} held-out images ({hold.get('origin', 'train split')}); at most {s['max_float_layers']} layer(s) in float",
                f"- {'PASSED' if rec['passed'] else 'FAILED'}: {rec['message']} ({rec['seconds']:.0f} s, "
                f"{len(rec['ranking'])} layers measured one at a time)", "",
                "| step | layer kept in float | op | held-out agreement % | held-out dF1 pp | KL | median ms | latency cost ms |",
                "|---|---|---|---|---|---|---|---|"]
        for i, st in enumerate(rec["steps"]):
            j = st["heldout"]
            ms, cost = st.get("median_ms"), st.get("latency_cost_ms")
            out.append(f"| {i} | {st['added'] or '(plain INT8)'} | {st['op_type'] or ''} | {100 * j['top1_agreement']:.1f} | "
                       f"{j['delta_macro_f1_pp']:+.2f} | {j['kl']:.2e} | {'' if ms is None else f'{ms:.3f}'} | "
                       f"{'' if cost is None else f'{cost:+.3f}'} |")
        v = a.get("verify")
        if v:
            lo, hi = v["delta_macro_f1_ci95"]
            out.append("")
            out.append(f"- final on the test split ({v['images']} images): macro-F1 {v['delta_macro_f1_pp']:+.2f} pp "
                       f"[{lo:+.2f}, {hi:+.2f}], top-1 agreement {100 * v['top1_agreement']:.1f}%")
        lat = rec.get("latency")
        if lat:
            out.append(f"- latency ({lat['threads']} thread(s), median of {lat['runs']} runs, bench's protocol): plain INT8 "
                       f"{lat['plain_ms']:.3f} ms, final {lat['final_ms']:.3f} ms ({lat['cost_ms']:+.3f} ms)")
        out.append("")
    return out
