"""The scaffolding every training method shares: one run folder, one epoch loop.

A method (supervised, protonet) brings its datasets, its model and what one epoch
means for it: a training pass and a validation (:class:`EpochSteps`). Everything
else is the same for every method and lives here, so resuming, early stopping, the
best/last files, ``split.csv``, ``epochs.csv``, ``train.log``, ``metrics.json`` and
``curves.png`` behave identically whichever method ran:

* :func:`begin_run`: process group, threads, seed, run folder, the ``last`` payload
  with ``--resume``, and the split (reused when one exists, written to ``split.csv``);
* :func:`prepare_model`: freezing, device, optimizer and schedule, resumed state;
* :func:`run_epochs`: the epoch loop driver;
* :func:`finish_run`: ``metrics.json``, ``train.log`` and ``curves.png``.

The same code runs alone or under ``torchrun`` (DDP): only rank 0 writes files.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecxr.data.folders import (
    HOLDOUT,
    DatasetIndex,
    Sample,
    build_index,
    class_counts,
    dataset_root,
    parse_ratios,
    read_split_csv,
    write_split_csv,
)
from edgecxr.device.atomic import write_json, write_text
from edgecxr.device.contract import Contract
from edgecxr.device.preprocess import PreprocessSpec
from edgecxr.errors import EdgecxrError
from edgecxr.eval.metrics import macro_f1
from edgecxr.models.checkpoint import make_contract
from edgecxr.models.registry import get_config
from edgecxr.train.config import TrainConfig
from edgecxr.train.dataset import AugmentSpec, CXRDataset
from edgecxr.train.distributed import Dist
from edgecxr.train.site_augment import SiteAugmentSpec

SUPERVISED_STEP_SIZE = 7  # StepLR defaults when --step-size/--gamma are not given; protonet
SUPERVISED_GAMMA = 0.1  # fills in its own (x0.5 every 10 epochs) before it gets here


@dataclass
class Run:
    """One training run in progress: its config, process group, preprocessing and split."""

    cfg: TrainConfig
    dist: Dist
    spec: PreprocessSpec
    index: DatasetIndex
    resume_payload: dict | None = None  # the ``last`` file's payload with --resume
    log_lines: list[str] = field(default_factory=list)  # train.log

    @property
    def classes(self) -> list[str]:
        return self.index.classes

    @property
    def show(self) -> bool:
        """Progress bars: asked for, and on rank 0 only."""
        return self.cfg.progress and self.dist.is_main

    def path(self, name: str) -> str:
        return os.path.join(self.cfg.out, name)

    def contract(self, method: str) -> Contract:
        source = {"data_root": self.index.root, "split_csv": os.path.abspath(self.path("split.csv")),
                  "sources": source_counts(self.index)}
        return make_contract(self.cfg.arch, self.classes, self.spec, method=method, source=source)

    def datasets(self, train_samples: list[Sample]) -> tuple[CXRDataset, CXRDataset]:
        """Training (augmented unless --no-augment, site-randomised with --site-augment) and validation datasets."""
        cfg, index = self.cfg, self.index
        site = SiteAugmentSpec().with_probabilities(cfg.site_augment_p) if cfg.site_augment else None
        train_ds = CXRDataset(index.root, train_samples, self.classes, self.spec, AugmentSpec() if cfg.augment else None,
                              cfg.seed, self.show, "loading train", site_spec=site)
        val_ds = CXRDataset(index.root, index.of_split("val"), self.classes, self.spec, None, cfg.seed, self.show, "loading val")
        return train_ds, val_ds

    def skipped(self, train_ds: CXRDataset, val_ds: CXRDataset) -> list[tuple[str, str]]:
        """Unreadable files: found while indexing, and while loading either dataset."""
        return self.index.skipped + train_ds.skipped + val_ds.skipped

    def start_log(self, train_ds: CXRDataset, val_ds: CXRDataset, *notes: str) -> None:
        """The head of train.log: classes, split counts, the method's notes, unreadable files."""
        counts = {s: class_counts(self.index.of_split(s)) for s in ("train", "val", "test", HOLDOUT) if self.index.of_split(s)}
        self.log_lines += [f"classes: {self.classes}", "split counts: " + json.dumps(counts),
                           "sources (split: class counts): " + json.dumps(source_counts(self.index)), *notes]
        self.log_lines += [f"skipped {f}: {why}" for f, why in self.skipped(train_ds, val_ds)]

    def epoch_bar(self, items: Iterable, epoch: int, unit: str) -> Any:
        from edgecxr.progress import progress

        return progress(items, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit=unit, enabled=self.show)


@dataclass
class Progress:
    """Where a run stands: restored from ``last`` with --resume, advanced by :func:`run_epochs`."""

    start_epoch: int = 0
    best_loss: float = float("inf")
    history: list[dict] = field(default_factory=list)  # epochs.csv rows
    bad_epochs: int = 0  # epochs since the validation loss last improved
    seen_images: int = 0  # this invocation, all processes
    train_seconds: float = 0.0  # this invocation's epoch loop


@dataclass
class EpochStats:
    """What a method's training pass over one epoch reports."""

    loss: float
    accuracy: float
    images: int  # seen by this process


@dataclass
class Validation:
    """What a method's validation after one epoch reports."""

    loss: float  # early stopping and the best checkpoint follow this
    y: np.ndarray  # labels and predictions, for macro-F1 (and accuracy unless given)
    pred: np.ndarray
    accuracy: float | None = None


@dataclass
class EpochSteps:
    """What a training method plugs into :func:`run_epochs`."""

    train_epoch: Callable[[int], EpochStats]  # epoch index -> one training pass
    validate: Callable[[int], Validation]  # epoch index -> validation of the current model
    save: Callable[..., None]  # save(path, **plain_data): writes the best and last files
    best_file: str
    last_file: str
    extra: dict = field(default_factory=dict)  # plain data saved in both files (train_config, ...)
    val_name: str = "val"  # how the log line names the validation
    stop_what: str = "validation loss"  # how the early-stop line names what stopped improving


def begin_run(cfg: TrainConfig, last_file: str, read_last: Callable[[str], dict]) -> Run:
    """Start a run; with --resume, ``read_last`` reads ``OUT/last_file`` (its preprocessing wins over the flags)."""
    dist = start_run(cfg)
    spec = cfg.spec()
    payload = None
    if cfg.resume:
        last = os.path.join(cfg.out, last_file)
        if not os.path.exists(last):
            raise EdgecxrError(f"--resume: {last} not found; start without --resume")
        payload = read_last(last)
        spec = PreprocessSpec.from_dict(payload["contract"]["preprocess"])
    index = load_run_index(cfg, dist)
    if dist.is_main:
        write_split_csv(os.path.join(cfg.out, "split.csv"), index)
    return Run(cfg, dist, spec, index, payload)


def start_run(cfg: TrainConfig) -> Dist:
    """Process group, threads, seed and run folder: the same for every training method."""
    dist = Dist.from_env()
    get_config(cfg.arch)  # fail on a typo before the slow indexing
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif dist.world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.world_size))
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.out, exist_ok=True)
    return dist


def load_run_index(cfg: TrainConfig, dist: Dist) -> DatasetIndex:
    """Reuse ``split.csv`` (given, or from a resumed run) so every stage sees the same split."""
    existing = cfg.split_csv or (os.path.join(cfg.out, "split.csv") if cfg.resume else None)
    if existing and os.path.exists(existing):
        if cfg.holdout:
            raise EdgecxrError("--holdout makes a new split; drop --split-csv (or --resume keeps the run's own split)")
        index = read_split_csv(existing, dataset_root(cfg.data_roots))
        if cfg.classes and set(cfg.classes) != set(index.classes):
            raise EdgecxrError(f"--classes {','.join(cfg.classes)} differs from the classes of {existing} ({','.join(index.classes)})")
        return index
    if existing and cfg.split_csv:
        raise EdgecxrError(f"{existing}: --split-csv file not found")
    return build_index(cfg.data_roots, parse_ratios(cfg.split), cfg.seed, progress=cfg.progress and dist.is_main,
                       classes=cfg.classes, holdout=tuple(cfg.holdout or ()))


def source_counts(index: DatasetIndex) -> dict[str, dict[str, dict[str, int]]]:
    """``{source: {split: {class: n}}}``: what each source gave to each split (the contract records it)."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for src in index.sources:
        of_src = [s for s in index.samples if s.source == src]
        out[src or "unnamed"] = {sp: class_counts([s for s in of_src if s.split == sp])
                                 for sp in ("train", "val", "test", HOLDOUT) if any(s.split == sp for s in of_src)}
    return out


def set_trainable(model: nn.Module, freeze_backbone: bool, unfreeze_last: int) -> None:
    """``--freeze-backbone`` trains the head only; ``--unfreeze-last N`` also the last N backbone blocks."""
    if not freeze_backbone and not unfreeze_last:
        return
    for p in model.backbone.parameters():
        p.requires_grad = False
    if unfreeze_last:
        blocks = [m for m in model.backbone.modules() if len(list(m.children())) == 0 and any(True for _ in m.parameters())]
        for m in blocks[-unfreeze_last:]:
            for p in m.parameters():
                p.requires_grad = True


def make_optimizer(cfg: TrainConfig, params) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.lr)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=1e-4)
    else:
        raise EdgecxrError(f"--optimizer {cfg.optimizer!r}: choose adam or sgd")
    if cfg.scheduler == "step":
        step = SUPERVISED_STEP_SIZE if cfg.step_size is None else cfg.step_size
        gamma = SUPERVISED_GAMMA if cfg.gamma is None else cfg.gamma
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.StepLR(opt, step, gamma)
    elif cfg.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.epochs, 1))
    else:
        raise EdgecxrError(f"--scheduler {cfg.scheduler!r}: choose step or cosine")
    return opt, sched


def prepare_model(model: nn.Module, cfg: TrainConfig, resume_payload: dict | None, state_key: str,
                  device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer, Any, Progress]:
    """Freezing, device and channels-last, optimizer and scheduler, and the resumed state when there is one.

    ``state_key`` names the model's state dict in the ``last`` payload.
    """
    set_trainable(model, cfg.freeze_backbone, cfg.unfreeze_last)
    model = model.to(device).to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    if resume_payload is not None:
        model.load_state_dict(resume_payload[state_key])
    return model, opt, sched, restore_progress(resume_payload, opt, sched)


def restore_progress(payload: dict | None, opt: torch.optim.Optimizer, sched) -> Progress:
    """Optimizer/scheduler state and the run's progress from a ``last`` payload (a fresh start without one)."""
    if payload is None:
        return Progress()
    opt.load_state_dict(payload["optimizer"])
    sched.load_state_dict(payload["scheduler"])
    return Progress(int(payload["epoch"]) + 1, float(payload["best_val_loss"]), list(payload["history"]), int(payload.get("bad_epochs", 0)))


def run_epochs(run: Run, opt: torch.optim.Optimizer, sched, progress: Progress, steps: EpochSteps) -> Progress:
    """The epoch loop of every method: train, step the schedule, validate, log, save best/last, stop early."""
    from edgecxr.progress import write as progress_write

    cfg, dist = run.cfg, run.dist
    t_start = time.perf_counter()
    for epoch in range(progress.start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        stats = steps.train_epoch(epoch)
        sched.step()
        seconds = time.perf_counter() - t0
        images = stats.images * dist.world_size
        progress.seen_images += images
        val = steps.validate(epoch)
        row = epoch_row(epoch, stats.loss, stats.accuracy, val.loss, val.y, val.pred, len(run.classes),
                        opt.param_groups[0]["lr"], seconds, images, val_acc=val.accuracy)
        progress.history.append(row)
        improved, progress.best_loss, progress.bad_epochs, line = close_epoch(row, progress.best_loss, progress.bad_epochs, steps.val_name)
        run.log_lines.append(line)
        if dist.is_main:
            progress_write(line)
            save_epoch(run, steps, epoch, improved, progress, opt, sched)
        if cfg.early_stop and progress.bad_epochs >= cfg.early_stop:
            run.log_lines.append(f"early stop: {steps.stop_what} did not improve for {cfg.early_stop} epochs")
            break
    progress.train_seconds = time.perf_counter() - t_start
    return progress


def save_epoch(run: Run, steps: EpochSteps, epoch: int, improved: bool, progress: Progress, opt: torch.optim.Optimizer, sched) -> None:
    """The best file when validation improved, the ``last`` file (what --resume reads) always, and ``epochs.csv``."""
    extra = {**steps.extra, "epoch": epoch, "history": progress.history, "best_val_loss": progress.best_loss}
    if improved:
        steps.save(run.path(steps.best_file), **extra)
    steps.save(run.path(steps.last_file), optimizer=opt.state_dict(), scheduler=sched.state_dict(), bad_epochs=progress.bad_epochs, **extra)
    write_epoch_log(run.path("epochs.csv"), progress.history)


def finish_run(run: Run, summary: dict, history: list[dict], title: str) -> dict:
    """``metrics.json``, ``train.log`` and ``curves.png`` (rank 0), then leave the process group; returns ``summary``."""
    if run.dist.is_main:
        write_json(run.path("metrics.json"), summary)
        write_text(run.path("train.log"), "\n".join(run.log_lines) + "\n")
        from edgecxr.train.plots import plot_curves

        plot_curves(history, run.path("curves.png"), title=title)
    run.dist.close()
    return summary


def epoch_row(epoch: int, train_loss: float, train_acc: float, val_loss: float, val_y: np.ndarray, val_pred: np.ndarray,
              num_classes: int, lr: float, seconds: float, images: int, val_acc: float | None = None) -> dict:
    """One ``epochs.csv`` row (0-based ``epoch``); every training method writes these columns.

    ``val_acc`` defaults to the accuracy of ``val_pred``; protonet passes its mean episode accuracy.
    """
    if val_acc is None:
        val_acc = float((np.asarray(val_pred) == np.asarray(val_y)).mean())
    return {
        "epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
        "val_loss": val_loss, "val_acc": val_acc,
        "val_macro_f1": macro_f1(val_y, val_pred, num_classes),
        "lr": lr, "seconds": seconds, "images_per_s": images / seconds,
    }


def close_epoch(row: dict, best_loss: float, bad_epochs: int, val_name: str) -> tuple[bool, float, int, str]:
    """Early-stopping bookkeeping and the log line for one finished epoch.

    Returns ``(improved, best_val_loss, bad_epochs, line)``; ``improved`` means a new best checkpoint.
    """
    improved = row["val_loss"] < best_loss - 1e-6
    best_loss = min(best_loss, row["val_loss"])
    bad_epochs = 0 if improved else bad_epochs + 1
    line = (f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | {val_name} loss {row['val_loss']:.4f} "
            f"acc {row['val_acc']:.4f} macro-F1 {row['val_macro_f1']:.4f} | {row['images_per_s']:.1f} img/s{' *' if improved else ''}")
    return improved, best_loss, bad_epochs, line


def run_summary(method: str, run: Run, progress: Progress, train_ds: CXRDataset, val_ds: CXRDataset, config: dict) -> dict:
    """The ``metrics.json`` keys every training method writes (the CLI and the README tables read them)."""
    history, seconds = progress.history, progress.train_seconds
    best = min(history, key=lambda r: r["val_loss"]) if history else {}
    return {
        "arch": run.cfg.arch, "classes": run.classes, "method": method, "epochs_run": len(history), "best_epoch": best.get("epoch"),
        "best_val_loss": best.get("val_loss"), "best_val_acc": best.get("val_acc"), "best_val_macro_f1": best.get("val_macro_f1"),
        "train_seconds": seconds, "images_per_s": progress.seen_images / seconds if seconds > 0 else None,
        "world_size": run.dist.world_size, "n_train": len(train_ds), "n_val": len(val_ds), "n_test": len(run.index.of_split("test")),
        "skipped_files": [{"file": f, "reason": why} for f, why in run.skipped(train_ds, val_ds)], "config": config,
    }


def write_epoch_log(path: str, history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    write_text(path, buf.getvalue())
