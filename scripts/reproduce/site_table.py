#!/usr/bin/env python3
"""The README table "Training for a new site": what each training variant does on a source it never saw.

    python scripts/reproduce/site_table.py runs/site/base_loso runs/site/aug_loso runs/site/multi runs/site/robust \\
        runs/site/base_losoN runs/site/robust_losoN --tb ../shared/data/tbcxr/Tuberculosis --out runs/site/table

Each run folder comes from ``bash scripts/reproduce/train_site_variants.sh`` (trained and calibrated, so
every image gets the device runner's verdict: a label, "refer" or "refuse"). The verdicts come
from ``device/classify.py`` itself (image-quality check, model, temperature, conformal set,
OOD refusal), on the checkpoint (FP32); an INT8 file is measured with ``edgecxr sitecheck``.
Per run:

- **test**: macro-F1 on its test images of the first training source (covid-radiography),
  and the share of them refused as "not a chest X-ray";
- **LOSO**: macro-F1 on the leave-one-source-out split: the test images of the classes the
  run trained from that source, plus every held-out image (``--holdout``), so Normal is judged on
  a source the model never saw;
- **unseen Normal**: share of the held-out Normal images called each class, referred, refused;
- **TB (unseen, no such class)**: share of ``--tb`` images called COVID and refused;
- **shifted sites**: macro-F1 of the test images after each ``--shift`` (edgecxr.site.sim).

Every run is compared with the first run given on the same test images (macro-F1), and runs
that share a fold (the same held-out images) with the first run of that fold (share of the
unseen Normal images called COVID, LOSO macro-F1): 95% paired bootstrap CIs, the same
resampled images for both runs. Writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

# pad and invert are not among train --site-augment's transforms, nor clahe unless --site-augment-p turns local_contrast
# on (the *_lc variants); the others overlap them in kind
DEFAULT_SHIFTS = ("gamma:0.5", "gamma:2.0", "jpeg:30", "crop:0.15", "blur_noise:1.5", "clahe:8", "pad:0.15", "invert")
N_BOOT = 1000


def _classifier(run: str, threads: int):
    from edgecxr.device.classify import Classifier
    from edgecxr.models.runtime import open_model

    return Classifier(open_model(os.path.join(run, "best.pt"), threads))


def _verdicts(clf, grays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """top-1 index (-1 when refused before the model), action, per image."""
    top, action = [], []
    for g in grays:
        p = clf.classify_gray(g, "")
        top.append(int(np.argmax(p.probabilities)) if p.ran_model else -1)
        action.append(p.verdict.action)
    return {"top": np.array(top), "action": np.array(action)}


def _macro_f1(y: np.ndarray, top: np.ndarray, k: int) -> float:
    """Macro-F1 over the classes these images hold (a held-out class has none); an image refused
    before the model ran (top -1) counts as wrong."""
    from sklearn.metrics import f1_score

    present = sorted(set(y.tolist()))
    return float(f1_score(y, np.where(top < 0, k, top), labels=present, average="macro", zero_division=0))


def _boot(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, n, (N_BOOT, n))


def _ci(values: np.ndarray) -> list[float]:
    return [float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))]


def _f1_ci(y: np.ndarray, top: np.ndarray, k: int) -> dict:
    idx = _boot(len(y))
    return {"value": _macro_f1(y, top, k), "ci95": _ci(np.array([_macro_f1(y[i], top[i], k) for i in idx]))}


def _shares(v: dict[str, np.ndarray], classes: list[str]) -> dict[str, float]:
    answered = v["action"] == "answer"
    out = {f"called {c}": float((answered & (v["top"] == i)).mean()) for i, c in enumerate(classes)}
    out["refer"] = float((v["action"] == "refer").mean())
    out["refuse"] = float((v["action"] == "refuse").mean())
    return out


def _load(files: list[str]) -> list[np.ndarray]:
    from edgecxr.device.image_io import load_gray

    return [load_gray(f) for f in files]


def measure(run: str, tb_dir: str | None, shifts: tuple[str, ...], threads: int) -> dict:
    from edgecxr.data.folders import HOLDOUT, read_split_csv
    from edgecxr.device.image_io import is_image_file
    from edgecxr.site.sim import apply_shift

    clf = _classifier(run, threads)
    contract = clf.backend.contract
    classes = list(contract.classes)
    k = len(classes)
    index = read_split_csv(contract.source["split_csv"], contract.source["data_root"], classes)
    first = index.sources[0] if index.sources else ""
    test = [s for s in index.of_split("test") if s.source == first]
    held = index.of_split(HOLDOUT)
    trained_from_first = {s.label for s in index.of_split("train") if s.source == first}
    loso = [s for s in test if s.label in trained_from_first and not any(h.label == s.label for h in held)] + held
    path = lambda s: os.path.join(index.root, s.file)  # noqa: E731
    out: dict = {"run": run, "classes": classes, "sources": contract.source.get("sources"), "first_source": first}
    with open(os.path.join(run, "metrics.json"), encoding="utf-8") as fh:
        cfg = json.load(fh)["config"]
    out["variant"] = {"balance": cfg.get("balance", "none"), "site_augment": cfg.get("site_augment", False),
                      "site_augment_p": cfg.get("site_augment_p"),
                      "holdout": cfg.get("holdout") or [],
                      "sources": sorted(src for src, splits in (contract.source.get("sources") or {}).items() if "train" in splits)}

    test_gray = _load([path(s) for s in test])
    y_test = np.array([classes.index(s.label) for s in test])
    v_test = _verdicts(clf, test_gray)
    out["test"] = {"files": [s.file for s in test], "y": y_test.tolist(), "top": v_test["top"].tolist(),
                   "macro_f1": _f1_ci(y_test, v_test["top"], k), **_shares(v_test, classes)}
    if held:
        y_loso = np.array([classes.index(s.label) for s in loso])
        v_held = _verdicts(clf, _load([path(s) for s in held]))
        top_loso = np.concatenate([v_test["top"][[test.index(s) for s in loso[: len(loso) - len(held)]]], v_held["top"]])
        out["loso"] = {"files": [s.file for s in loso], "y": y_loso.tolist(), "top": top_loso.tolist(),
                       "macro_f1": _f1_ci(y_loso, top_loso, k), "held_out": sorted({f"{s.source}/{s.label}" for s in held})}
        normal = [i for i, s in enumerate(held) if s.label == "Normal"]
        if normal:
            vn = {key: val[normal] for key, val in v_held.items()}
            out["unseen_normal"] = {"files": [held[i].file for i in normal], "n": len(normal),
                                    "top": vn["top"].tolist(), "action": vn["action"].tolist(), **_shares(vn, classes)}
    if tb_dir:
        files = sorted(os.path.join(tb_dir, f) for f in os.listdir(tb_dir) if is_image_file(f))
        vt = _verdicts(clf, _load(files))
        out["tb"] = {"n": len(files), **_shares(vt, classes)}
    out["shifts"] = {}
    normal = y_test == classes.index("Normal") if "Normal" in classes else np.zeros(len(y_test), bool)
    for spec in ["none", *shifts]:
        vs = v_test if spec == "none" else _verdicts(clf, [apply_shift(g, spec) for g in test_gray])
        row = {"macro_f1": _macro_f1(y_test, vs["top"], k), **_shares(vs, classes)}
        if normal.any():  # the failure a new site shows first: its normal images called COVID
            row["normal"] = {"n": int(normal.sum()), **_shares({key: val[normal] for key, val in vs.items()}, classes)}
        out["shifts"][spec] = row
    return out


def _site_aug(variant: dict) -> str:
    if not variant["site_augment"]:
        return "no"
    return f"yes, {variant['site_augment_p']}" if variant.get("site_augment_p") else "yes"


def cached_measure(run: str, tb_dir: str | None, shifts: tuple[str, ...], threads: int) -> dict:
    """:func:`measure`, kept in ``RUN/site_measure.json`` and reused while the checkpoint, the TB folder
    and the shifts are the same (rerunning the table measures only new or retrained runs)."""
    from edgecxr.device.atomic import write_json
    from edgecxr.models.checkpoint import file_sha256

    key = {"checkpoint_sha256": file_sha256(os.path.join(run, "best.pt")), "tb": tb_dir, "shifts": list(shifts)}
    cache = os.path.join(run, "site_measure.json")
    if os.path.exists(cache):
        with open(cache, encoding="utf-8") as fh:
            kept = json.load(fh)
        if kept.get("key") == key:
            return kept["row"]
    print(f"measuring {run}", file=sys.stderr)
    row = measure(run, tb_dir, shifts, threads)
    write_json(cache, {"key": key, "row": row})
    return row


def _answered(side: dict, cls: int) -> dict[str, bool]:
    """File name -> answered as ``cls``. Keyed by the name within its class folder, so a run that holds
    out a site sample's rest (``site_rest/Normal/x.png``) pairs with one that held out the whole folder
    (``covid-radiography/Normal/x.png``) on the images both never saw."""
    hit = (np.array(side["action"]) == "answer") & (np.array(side["top"]) == cls)
    names = [os.path.basename(f) for f in side["files"]]
    if len(set(names)) < len(names):  # two held-out folders share file names: pair by whole path only
        names = list(side["files"])
    return {n: bool(h) for n, h in zip(names, hit)}


def _paired_share(a: dict, b: dict, cls: int) -> dict:
    """Change b - a in the share of the same images answered as class ``cls`` (the images both
    runs held out), paired bootstrap CI."""
    ha, hb = _answered(a, cls), _answered(b, cls)
    common = sorted(set(ha) & set(hb))
    if not common:
        return {}
    d = np.array([hb[f] for f in common], float) - np.array([ha[f] for f in common], float)
    idx = _boot(len(d))
    return {"delta": float(d.mean()), "ci95": _ci(d[idx].mean(1)), "n": len(common)}


def _paired_f1(a: dict, b: dict, k: int) -> dict:
    ya, yb = np.array(a["y"]), np.array(b["y"])
    if a["files"] != b["files"] or not (ya == yb).all():
        return {}
    ta, tb = np.array(a["top"]), np.array(b["top"])
    idx = _boot(len(ya))
    boot = np.array([_macro_f1(ya[i], tb[i], k) - _macro_f1(ya[i], ta[i], k) for i in idx])
    return {"delta": _macro_f1(ya, tb, k) - _macro_f1(ya, ta, k), "ci95": _ci(boot)}


def compare(rows: list[dict], pairs: dict[str, str] | None = None) -> None:
    """Each run against the first run given (the plain recipe) on the same test images, and against
    the first run that held out the same images (its fold's baseline) on the unseen source, or the
    baseline ``pairs`` names for it (run folder name -> baseline run folder name)."""
    first_of_fold: dict[tuple, dict] = {}
    by_name = {os.path.basename(r["run"]): r for r in rows}
    for name, base in (pairs or {}).items():
        if name not in by_name or base not in by_name:
            sys.exit(f"site_table: --vs {name}={base}: both runs must be among the runs given")
    for r in rows:
        k = len(r["classes"])
        vs: dict = {}
        if r is not rows[0]:
            vs["test_macro_f1"] = _paired_f1(rows[0]["test"], r["test"], k)
            vs["test_baseline"] = rows[0]["run"]
        fold = tuple(r.get("loso", {}).get("held_out", []))
        base = first_of_fold.setdefault(fold, r)
        named = (pairs or {}).get(os.path.basename(r["run"]))
        base = by_name[named] if named else base
        if fold and base is not r:
            vs["fold_baseline"] = base["run"]
            vs["loso_macro_f1"] = _paired_f1(base["loso"], r["loso"], k)
            if "unseen_normal" in r and "unseen_normal" in base:
                vs["unseen_normal_called_COVID"] = _paired_share(base["unseen_normal"], r["unseen_normal"], r["classes"].index("COVID"))
        if vs:
            r["vs"] = vs


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci_txt(m: dict, scale: float = 1.0, sign: bool = False) -> str:
    if not m:
        return ""
    fmt = "{:+.1f}" if sign else "{:.3f}"
    v, (lo, hi) = m.get("value", m.get("delta")), m["ci95"]
    return f"{fmt.format(v * scale)} [{fmt.format(lo * scale)}, {fmt.format(hi * scale)}]"


def markdown(rows: list[dict], cpu: str) -> str:
    head = ("| run | sources | balance | site aug | held out | test macro-F1 [95% CI] | LOSO macro-F1 [95% CI] | "
            "unseen Normal: COVID / Normal / VP / refer / refuse | Δ called COVID vs fold baseline, pp [95% CI] | "
            "Δ test macro-F1 vs first run, pp [95% CI] | test refused | TB: called COVID / refused |")
    lines = [f"Machine: {cpu}. FP32 checkpoints, device runner's verdicts (temperature, conformal set, OOD refusal).", "",
             head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        v = r["variant"]
        un = r.get("unseen_normal")
        unseen = " / ".join(_pct(un[key]) for key in ("called COVID", "called Normal", "called Viral_Pneumonia", "refer", "refuse")) if un else "n/a"
        vs = r.get("vs", {})
        tb = r.get("tb")
        lines.append("| " + " | ".join([
            os.path.basename(r["run"]), "+".join(v["sources"]), v["balance"], _site_aug(v),
            ", ".join(r.get("loso", {}).get("held_out", [])) or "none", _ci_txt(r["test"]["macro_f1"]),
            _ci_txt(r["loso"]["macro_f1"]) if "loso" in r else "n/a", unseen,
            _ci_txt(vs.get("unseen_normal_called_COVID", {}), 100, True), _ci_txt(vs.get("test_macro_f1", {}), 100, True),
            _pct(r["test"]["refuse"]), f"{_pct(tb['called COVID'])} / {_pct(tb['refuse'])}" if tb else "",
        ]) + " |")
    shifts = list(rows[0]["shifts"]) if rows else []
    if shifts:
        lines += ["", "Simulated sites (the test images after each shift, `edgecxr.site.sim`; `none` is unshifted): "
                  "macro-F1 / share of the Normal images called COVID / share of all images refused.", "",
                  "| run | " + " | ".join(shifts) + " |", "|" + "|".join(["---"] * (len(shifts) + 1)) + "|"]
        for r in rows:
            cells = []
            for spec in shifts:
                m = r["shifts"][spec]
                covid = _pct(m["normal"]["called COVID"]) if "normal" in m else "n/a"
                cells.append(f"{m['macro_f1']:.3f} / {covid} / {_pct(m['refuse'])}")
            lines.append(f"| {os.path.basename(r['run'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (trained and calibrated)")
    ap.add_argument("--tb", help="a folder of images of a class the model does not know, from an unseen source (tbcxr/Tuberculosis)")
    ap.add_argument("--shift", action="append", help=f"simulated site shifts (default: {' '.join(DEFAULT_SHIFTS)})")
    ap.add_argument("--vs", action="append", default=[], metavar="RUN=BASELINE",
                    help="compare RUN's unseen Normals with BASELINE's (folder names) instead of its fold's first run; "
                         "e.g. base_site50=base_losoN: what the site's labelled images bought (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True, help="output path without suffix: OUT.json and OUT.md")
    args = ap.parse_args()
    from edgecxr.device.atomic import write_json, write_text
    from edgecxr.device.cpufeatures import cpu_description

    rows = []
    for run in args.runs:
        if not os.path.exists(os.path.join(run, "best.pt")):
            sys.exit(f"site_table: {run}/best.pt not found; train it with scripts/reproduce/train_site_variants.sh")
        rows.append(cached_measure(run, args.tb, tuple(args.shift or DEFAULT_SHIFTS), args.threads))
    pairs = {}
    for item in args.vs:
        name, sep, base = item.partition("=")
        if not sep or not name or not base:
            sys.exit(f"site_table: --vs {item!r}: expected RUN=BASELINE, e.g. base_site50=base_losoN")
        pairs[name] = base
    compare(rows, pairs)
    d = cpu_description()
    cpu = f"{d.get('model')} ({d.get('arch')}; {' '.join(d.get('int8_features') or d.get('features') or []) or 'no integer extensions'})"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_json(args.out + ".json", {"cpu": cpu, "rows": rows})
    md = markdown(rows, cpu)
    write_text(args.out + ".md", md)
    print(md)


if __name__ == "__main__":
    main()
