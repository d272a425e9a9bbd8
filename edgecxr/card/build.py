"""A Markdown model card from the files a run already has.

Everything in it is read from files edgecxr wrote (checkpoint contract, metrics.json,
split.csv, eval.json, convert_report.json, the OOD evaluation's JSON); nothing is
re-measured, and every section missing its file says so and gives the command that
produces it. Each number is printed beside the command that reproduces it.
"""
from __future__ import annotations

import csv
import glob
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from edgecxr.device.contract import Contract

NOT_CLINICAL = ("**Not for clinical use.** This model is a research and engineering artifact. It has not been "
                "validated prospectively, cleared by any regulator, or tested on the population, scanners or "
                "protocols of any clinic. It must not be used to diagnose, triage or treat patients.")

KNOWN_BIASES = [
    "Viral Pneumonia images come from the Kaggle \"Chest X-Ray Images (Pneumonia)\" set of **paediatric** patients "
    "(Guangzhou): the class is confounded with age and body size, so the model may detect \"child\" rather than "
    "\"viral pneumonia\", and adult viral pneumonia is untested.",
    "COVID images were collected from many public sources (PadChest/BIMCV, a German medical school, SIRM, GitHub, "
    "Kaggle, Twitter) and often carry **burnt-in markers, text and arrows**, different exposure and cropping: "
    "a model can separate COVID by source artefacts rather than lung findings.",
    "Normal images come from RSNA (adult) and the same paediatric Kaggle set; each class therefore has its own "
    "mixture of hospitals, devices and ages (shortcut learning risk).",
    "Source: the COVID-19 Radiography Database (M.E.H. Chowdhury, T. Rahman et al., Qatar University and "
    "University of Dhaka; Kaggle), 3 of its 4 classes (Lung_Opacity absent), as a 1000-per-class copy resized to "
    "256 px by a third party (GitHub GitKentC/lundis); see ../shared/data/README.md.",
    "Balanced classes (equal counts) do not reflect any clinical prevalence; predictive values at a clinic differ.",
]


@dataclass
class CardInputs:
    """What the card is made from; any of it may be missing."""

    model: str
    contract: Contract
    run_dir: str | None = None
    metrics: dict[str, Any] | None = None
    split_counts: dict[str, dict[str, int]] | None = None
    evals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    convert_reports: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    ood: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {"rows": data}
    except (OSError, ValueError):
        return None


def split_counts(split_csv: str) -> dict[str, dict[str, int]] | None:
    if not split_csv or not os.path.exists(split_csv):
        return None
    with open(split_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, Counter] = {}
    for r in rows:
        out.setdefault(r["split"], Counter())[r["label"]] += 1
    return {s: dict(sorted(c.items())) for s, c in out.items()}


def gather(model: str, run_dir: str | None, ood_files: list[str] | None = None) -> CardInputs:
    """Find the run's files around ``model`` (a checkpoint or an export)."""
    from edgecxr.decide.store import read_contract

    contract = read_contract(model)
    if run_dir is None:
        ckpt = contract.source.get("checkpoint")
        run_dir = os.path.dirname(os.path.abspath(ckpt if ckpt else model))
    inputs = CardInputs(model=model, contract=contract, run_dir=run_dir)
    inputs.metrics = _read_json(os.path.join(run_dir, "metrics.json"))
    csv_path = contract.source.get("split_csv") or os.path.join(run_dir, "split.csv")
    inputs.split_counts = split_counts(csv_path)
    folders = {run_dir, os.path.dirname(os.path.abspath(model))}
    for folder in sorted(folders):
        for path in sorted(glob.glob(os.path.join(folder, "**", "eval.json"), recursive=True)):
            data = _read_json(path)
            if data and "accuracy" in data:
                inputs.evals.append((path, data))
        for path in sorted(glob.glob(os.path.join(folder, "**", "convert_report.json"), recursive=True)):
            data = _read_json(path)
            if data and "artifacts" in data:
                inputs.convert_reports.append((path, data))
        if ood_files is None:
            found = glob.glob(os.path.join(folder, "**", "ood*.json"), recursive=True)
            found += glob.glob(os.path.join(folder, "**", "decision_table*.json"), recursive=True)  # scripts/reproduce/decision_table.py
            for path in sorted(found):
                data = _read_json(path)
                if data:
                    inputs.ood.append((path, data))
    for path in ood_files or []:
        data = _read_json(path)
        if data:
            inputs.ood.append((path, data))
    inputs.evals = list(dict(inputs.evals).items())
    inputs.convert_reports = list(dict(inputs.convert_reports).items())
    inputs.ood = list(dict(inputs.ood).items())
    return inputs
