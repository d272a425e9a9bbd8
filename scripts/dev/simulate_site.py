#!/usr/bin/env python3
"""Write a simulated new site: one split of a dataset with a site's acquisition shift applied.

The copy has one subfolder per class (what ``edgecxr sitecheck --labels`` reads), PNG
files (lossless, so a ``jpeg`` shift stays exactly as decoded) and a ``SITE.json``
naming the source, split and shifts. Shifts are ``edgecxr/site/sim.py``'s, applied in
the order given::

    python scripts/dev/simulate_site.py --data ../shared/data/covid-radiography --split-csv runs/mnv2/split.csv \\
        --split test --shift gamma:0.5 --out /tmp/sites/gamma05
    edgecxr sitecheck runs/mnv2 --data /tmp/sites/gamma05 --labels

For evaluation only: the output must lie outside the repository (refused otherwise).
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/dev/ -> repo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the dataset folder the split refers to")
    p.add_argument("--split-csv", help="the run's split.csv (without it: every image of --data, --split all)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"], help="which images (default test)")
    p.add_argument("--shift", action="append", default=[], metavar="NAME[:PARAM]",
                   help="gamma:0.5, jpeg:30, clahe:8, crop:0.15, pad:0.15, invert, blur_noise:1.5 (repeatable, applied in order)")
    p.add_argument("--out", required=True, help="where to write the site (outside the repository)")
    a = p.parse_args(argv)

    import cv2

    from edgecxr.data.folders import index_unsplit, read_split_csv
    from edgecxr.device.atomic import atomic_path, write_json
    from edgecxr.device.image_io import ImageError, load_gray
    from edgecxr.errors import EdgecxrError
    from edgecxr.site.sim import apply_shifts, parse_shift

    try:
        out = os.path.abspath(a.out)
        if os.path.commonpath([out, ROOT]) == ROOT:
            raise EdgecxrError(f"--out {a.out} is inside the repository; write simulated sites elsewhere (e.g. /tmp/sites/NAME)")
        for spec in a.shift:
            parse_shift(spec)
        if a.split_csv:
            index = read_split_csv(a.split_csv, a.data)
        elif a.split == "all":
            index = index_unsplit(a.data, progress=False)
        else:
            raise EdgecxrError(f"--split {a.split} needs --split-csv RUN/split.csv (or --split all)")
        samples = index.of_split(a.split)
        if not samples:
            raise EdgecxrError(f"{a.split_csv or a.data}: no images in split {a.split!r}")
        written, skipped = 0, 0
        for s in samples:
            try:
                gray = load_gray(os.path.join(index.root, s.file))
            except ImageError as exc:
                print(f"skipped {exc}", file=sys.stderr)
                skipped += 1
                continue
            dest = os.path.join(out, s.label, os.path.splitext(os.path.basename(s.file))[0] + ".png")
            with atomic_path(dest) as tmp:  # the temporary name ends in .png too: cv2 picks the encoder by suffix
                if not cv2.imwrite(tmp, apply_shifts(gray, a.shift)):
                    raise EdgecxrError(f"{dest}: could not write the PNG")
            written += 1
        write_json(os.path.join(out, "SITE.json"), {"source": index.root, "split_csv": a.split_csv, "split": a.split,
                                                    "shifts": a.shift, "images": written, "skipped": skipped})
    except EdgecxrError as exc:
        print(f"simulate_site: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {written} images ({', '.join(a.shift) or 'no shift'}) to {out}" + (f"; {skipped} unreadable skipped" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
