"""Benchmark on this machine: one measurement process per (artifact, thread count).

The parent only reads files and computes statistics; every model is loaded and run
in a child (``edgecxr/eval/measure.py``). The first child of each artifact also runs the
evaluation images and saves the softmax outputs, from which accuracy, macro-F1,
AUC, the bootstrap CIs and the paired comparison with the FP32 reference follow.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edgecxr.bench.artifacts import Artifact
from edgecxr.bench.evaldata import EvalCache, EvalSet
from edgecxr.errors import EdgecxrError
from edgecxr.eval.measure import run_in_subprocess


@dataclass
class Settings:
    threads: list[int]
    warmup: int = 10
    runs: int = 100
    min_seconds: float = 0.0
    bootstrap: int = 1000
    runtimes: tuple[str, ...] = ()  # empty: each file's default runtime; "all": every runtime that opens it


Key = tuple[str, str]  # (artifact path, runtime): what accuracy belongs to
RecordKey = tuple[str, str, int]  # (artifact path, runtime, threads): one latency measurement


def default_runtime(path: str) -> str:
    """The runtime a file opens with when none is asked for (``?`` for foreign suffixes)."""
    return (selected_runtimes(path, ()) or ["?"])[0]


def selected_runtimes(path: str, wanted: tuple[str, ...]) -> list[str]:
    """The runtimes a benchmark runs a file with: ``--runtimes`` intersected with those that open it."""
    from edgecxr.models.runtime import runtimes_for

    available = list(runtimes_for(path))
    if not wanted:
        return available[:1]
    if "all" in wanted:
        return available
    return [r for r in available if r in wanted]


@dataclass
class Evaluated:
    """The accuracy side of one artifact: its predictions on its evaluation set."""

    eval_set: EvalSet | None
    probs: np.ndarray | None
    note: str | None = None
    logits: np.ndarray | None = None  # what the device decides from (its reasons: bench.json "decision.reasons")

    @classmethod
    def from_logits(cls, eval_set: EvalSet | None, logits: np.ndarray | None, note: str | None = None) -> Evaluated:
        from edgecxr.device.decision import softmax

        return cls(eval_set, None if logits is None else softmax(logits), note, logits)


def evaluation_set(a: Artifact, cache: EvalCache) -> tuple[EvalSet | None, str | None]:
    if a.contract is None:
        return None, "no contract (foreign model): accuracy n/a" + (f"; {a.contract_error}" if a.contract_error else "")
    try:
        return cache.get(a.contract), None
    except EdgecxrError as exc:
        return None, f"accuracy n/a: {str(exc).splitlines()[0]}"


def measure_all(artifacts: list[Artifact], settings: Settings, cache: EvalCache, workdir: str,
                progress: Callable[[str], None] | None = None) -> tuple[dict[RecordKey, dict[str, Any]], dict[Key, Evaluated]]:
    """Latency records keyed by (path, runtime, threads), predictions keyed by (path, runtime)."""
    records: dict[RecordKey, dict[str, Any]] = {}
    evaluated: dict[Key, Evaluated] = {}
    for i, a in enumerate(artifacts):
        es, note = evaluation_set(a, cache)
        for r, runtime in enumerate(selected_runtimes(a.path, settings.runtimes)):
            for j, t in enumerate(settings.threads):
                if progress:
                    progress(f"{a.name} {runtime} x{t}")
                probs_out = os.path.join(workdir, f"probs_{i}_{r}.npy") if (es is not None and j == 0) else None
                rec = run_in_subprocess(a.path, t, os.path.join(workdir, f"measure_{i}_{r}_{t}.json"), warmup=settings.warmup,
                                        runs=settings.runs, min_seconds=settings.min_seconds, runtime=runtime,
                                        latency_input=es.npy if es else None, eval_inputs=es.npy if probs_out else None,
                                        probs_out=probs_out)
                records[(a.path, runtime, t)] = rec
                if j == 0:
                    logits = np.load(probs_out) if probs_out and "probs_file" in rec else None
                    why = note if (es is None or logits is not None) else (note or f"accuracy n/a: {rec.get('error', 'no predictions')}")
                    evaluated[(a.path, runtime)] = Evaluated.from_logits(es, logits, why)
    return records, evaluated


def predict_only(a: Artifact, cache: EvalCache, workdir: str, threads: int) -> Evaluated:
    """Predictions of an artifact (default runtime) that is a reference but not benchmarked itself."""
    es, note = evaluation_set(a, cache)
    if es is None:
        return Evaluated(None, None, note)
    probs_out = os.path.join(workdir, f"probs_ref_{abs(hash(a.path))}.npy")
    rec = run_in_subprocess(a.path, threads, probs_out + ".json", warmup=0, runs=0, min_seconds=0.0,
                            latency_input=es.npy, eval_inputs=es.npy, probs_out=probs_out)
    if "probs_file" not in rec:
        return Evaluated(es, None, f"reference failed: {rec.get('error', 'no predictions')}")
    return Evaluated.from_logits(es, np.load(probs_out), None)


def accuracy_columns(a: Artifact, ev: Evaluated, ref: Evaluated | None, n_boot: int) -> dict[str, Any]:
    """Accuracy, macro-F1, AUC with 95% CIs, and the paired change against the reference."""
    from edgecxr.decide.report import from_probabilities, reasons_section
    from edgecxr.eval.metrics import classification_report, compare_to_reference

    out: dict[str, Any] = {"accuracy": None, "macro_f1": None, "auc_macro": None, "n_images": None,
                           "reference": None, "delta_macro_f1_pp": None, "delta_macro_f1_ci95": None, "top1_agreement": None}
    if ev.probs is None or ev.eval_set is None:
        out["accuracy_note"] = ev.note
        return out
    es = ev.eval_set
    rep = classification_report(es.y, ev.probs, es.classes, n_boot=n_boot)
    out.update({k: rep[k] for k in ("accuracy", "accuracy_ci95", "macro_f1", "macro_f1_ci95", "auc_macro", "auc_macro_ci95", "n_images")})
    out["per_class"] = rep["per_class"]
    out["data_root"], out["split"] = es.root, es.split
    # ECE / Brier / NLL before and after the contract's temperature, coverage of its conformal sets
    block = a.contract.decision if a.contract else None
    out["decision"] = from_probabilities(ev.probs, es.y, es.classes, block, n_boot)
    if ev.logits is not None:  # answered / uncertain / unfamiliar / not a CXR, as the device decides
        out["decision"]["reasons"] = reasons_section(ev.logits, es.y, es.classes, block)
    if a.reference is None:
        out["accuracy_note"] = "no FP32 reference found (pass --reference FP32_MODEL)"
        return out
    out["reference"] = a.reference.name
    if ref is None or ref.probs is None or ref.eval_set is None:
        out["accuracy_note"] = f"reference {a.reference.name} gave no predictions"
        return out
    # pair on the images both were evaluated on (normally all of them)
    pos = {f: i for i, f in enumerate(ref.eval_set.files)}
    common = [(i, pos[f]) for i, f in enumerate(es.files) if f in pos]
    if not common:
        out["accuracy_note"] = f"reference {a.reference.name} was evaluated on other images"
        return out
    ia, ib = (np.array(v) for v in zip(*common))
    out.update(compare_to_reference(es.y[ia], ref.probs[ib], ev.probs[ia], len(es.classes), n_boot=n_boot))
    return out
