#!/usr/bin/env python3
"""Lay out "a clinic labels N of its own images" as source folders, by symbolic links.

The question behind it (issue 20): when ``edgecxr sitecheck`` says NO-GO for a new
site, how many labelled images of that site does retraining need before the site's
images are classified as the goal asks? This script turns one class folder of a
dataset (the new site's, e.g. ``covid-radiography/Normal``) into two sources:

* ``OUT/site/CLASS``: N images drawn with ``--seed``, to train on (``--data OUT/site``);
* ``OUT/site_rest/CLASS``: every other image, never trained on (``--holdout site_rest``);

and ``OUT/SOURCE/`` with the dataset's other class folders linked unchanged, so that
source keeps its name and therefore its split (edgecxr seeds each stratum from the
class name only: its test images are the same as in every other run). Nothing is
copied; the output must lie outside the repository::

    python scripts/reproduce/site_sample.py --data ../shared/data/covid-radiography --site-class Normal \\
        --n 50 --seed 0 --out /tmp/site50_s0
    edgecxr train --data /tmp/site50_s0/covid-radiography --data ../shared/data/tbcxr --data /tmp/site50_s0/site \\
        --data /tmp/site50_s0/site_rest --holdout site_rest --classes COVID,Normal,Viral_Pneumonia ...
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/reproduce/ -> repo


def _link(src: str, dest: str) -> None:
    if os.path.lexists(dest):
        if os.path.realpath(dest) == os.path.realpath(src):
            return
        raise SystemExit(f"{dest} exists and points elsewhere; give a fresh --out")
    os.symlink(os.path.abspath(src), dest)


def layout(data: str, site_class: str, n: int, seed: int, out: str) -> dict:
    """Make the three folders; returns what SITE.json records. The images of a class and the
    source's name are edgecxr's own (``edgecxr.data.folders``), so the layout is read as the data was."""
    from edgecxr.data.folders import list_images, source_name
    from edgecxr.errors import EdgecxrError

    try:
        classes, samples = list_images(data, min_classes=1)
    except EdgecxrError as exc:
        raise SystemExit(str(exc)) from None
    if site_class not in classes:
        raise SystemExit(f"--site-class {site_class}: no such class folder in {data} (it has {', '.join(classes)})")
    files = [s.file[len(site_class) + 1:] for s in samples if s.label == site_class]  # relative to the class folder
    if not 0 < n < len(files):
        raise SystemExit(f"--n {n}: {data}/{site_class} has {len(files)} images; give 0 < N < {len(files)}")
    picked = set(np.random.default_rng(seed).choice(len(files), size=n, replace=False).tolist())
    for i, f in enumerate(files):
        dest = os.path.join(out, "site" if i in picked else "site_rest", site_class, f)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        _link(os.path.join(data, site_class, f), dest)
    source = source_name(data)
    os.makedirs(os.path.join(out, source), exist_ok=True)
    others = [c for c in classes if c != site_class]
    for d in others:
        _link(os.path.join(data, d), os.path.join(out, source, d))
    return {"source": os.path.abspath(data), "source_name": source, "site_class": site_class, "n": n, "seed": seed,
            "site": sorted(files[i] for i in picked), "rest": len(files) - n, "other_classes": others}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the dataset folder holding the site's class folder")
    p.add_argument("--site-class", required=True, help="the class folder whose images play the new site (e.g. Normal)")
    p.add_argument("--n", type=int, required=True, help="how many of them the clinic labels for training")
    p.add_argument("--seed", type=int, default=0, help="which N (default 0)")
    p.add_argument("--out", required=True, help="where to lay the folders out (outside the repository)")
    a = p.parse_args(argv)
    out = os.path.abspath(a.out)
    if os.path.commonpath([out, ROOT]) == ROOT:
        raise SystemExit(f"--out {a.out} is inside the repository; the data must never be copied or linked into it")
    record = layout(a.data, a.site_class, a.n, a.seed, out)
    from edgecxr.device.atomic import write_json

    write_json(os.path.join(out, "SITE.json"), record)
    print(f"{out}: site/{a.site_class} {a.n} images, site_rest/{a.site_class} {record['rest']}, "
          f"{record['source_name']}/ {', '.join(record['other_classes'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
