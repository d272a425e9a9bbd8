"""Supervised fine-tuning: the ``edgecxr train`` loop.

Defaults follow the published CXR studies (Adam 1e-3, StepLR, early stopping on
validation loss, best checkpoint by validation loss). The same function runs alone
or under ``torchrun`` (DDP; gloo on CPU, nccl on GPU): only rank 0 writes files.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from edgecxr.device.preprocess import PreprocessSpec
from edgecxr.train.dataset import AugmentSpec, CXRDataset
from edgecxr.train.distributed import Dist
from torch import nn
from torch.utils.data import DataLoader

from edgecxr.atomic import write_json, write_text
from edgecxr.checkpoint import load_checkpoint, make_contract, save_checkpoint
from edgecxr.data import DatasetIndex, build_index, class_counts, parse_ratios, read_split_csv, write_split_csv
from edgecxr.errors import EdgecxrError
from edgecxr.metrics import macro_f1
from edgecxr.models import build_model
from edgecxr.registry import get_config


SUPERVISED_STEP_SIZE = 7
SUPERVISED_GAMMA = 0.1


@dataclass
class TrainConfig:
    data: str
    arch: str
    out: str
    epochs: int = 20
    img_size: int = 224
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    scheduler: str = "step"
    step_size: int | None = None  # None: the method's default (supervised 7, protonet 10)
    gamma: float | None = None  # None: the method's default (supervised 0.1, protonet 0.5)
    early_stop: int = 5
    freeze_backbone: bool = False
    unfreeze_last: int = 0
    class_weights: bool = False
    seed: int = 0
    pretrained: bool = False
    weights: str | None = None
    resume: bool = False
    qat: bool = False
    qat_target: str = "portable"  # the convert --int8 --target whose weight grid QAT simulates
    split: str = "80/10/10"
    split_csv: str | None = None
    equalize: str = "clahe"
    augment: bool = True
    workers: int = 0
    threads: int | None = None
    progress: bool = True
    preprocess: dict = field(default_factory=dict)

    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict({**self.preprocess, "size": self.img_size, "equalize": self.equalize})


def load_run_index(cfg: TrainConfig, dist: Dist) -> DatasetIndex:
    """Reuse ``split.csv`` (given, or from a resumed run) so every stage sees the same split."""
    existing = cfg.split_csv or (os.path.join(cfg.out, "split.csv") if cfg.resume else None)
    if existing and os.path.exists(existing):
        return read_split_csv(existing, cfg.data)
    if existing and cfg.split_csv:
        raise EdgecxrError(f"{existing}: --split-csv file not found")
    return build_index(cfg.data, parse_ratios(cfg.split), cfg.seed, progress=cfg.progress and dist.is_main)


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


def prepare_model(model: nn.Module, cfg: TrainConfig, resume_payload: dict | None, state_key: str, device: torch.device):
    """Freezing, device and channels-last, optimizer and scheduler, and the resumed state when there is one.

    Returns ``(model, optimizer, scheduler, (start_epoch, best_val_loss, history, bad_epochs))``.
    """
    set_trainable(model, cfg.freeze_backbone, cfg.unfreeze_last)
    model = model.to(device).to(memory_format=torch.channels_last)
    opt, sched = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    if resume_payload is not None:
        model.load_state_dict(resume_payload[state_key])
    return model, opt, sched, restore_progress(resume_payload, opt, sched)


def restore_progress(payload: dict | None, opt: torch.optim.Optimizer, sched) -> tuple[int, float, list[dict], int]:
    """Optimizer/scheduler state and (start epoch, best val loss, history, bad epochs) from a ``last`` payload."""
    if payload is None:
        return 0, float("inf"), [], 0
    opt.load_state_dict(payload["optimizer"])
    sched.load_state_dict(payload["scheduler"])
    return int(payload["epoch"]) + 1, float(payload["best_val_loss"]), list(payload["history"]), int(payload.get("bad_epochs", 0))


@torch.no_grad()
def evaluate_loss(model: nn.Module, loader: DataLoader, loss_fn: nn.Module) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean loss, labels and softmax probabilities over a loader."""
    model.eval()
    total, n, ys, ps = 0.0, 0, [], []
    for x, y in loader:
        x = x.contiguous(memory_format=torch.channels_last)
        logits = model(x)
        total += float(loss_fn(logits, y)) * len(y)
        n += len(y)
        ys.append(y.numpy())
        ps.append(torch.softmax(logits, 1).numpy())
    return total / max(n, 1), np.concatenate(ys), np.concatenate(ps)


def train(cfg: TrainConfig) -> dict:
    """Train and write ``best.pt``, ``last.pt``, ``split.csv``, ``metrics.json``, ``epochs.csv``, ``train.log``, ``curves.png``."""
    from tqdm import tqdm

    dist = start_run(cfg)
    spec = cfg.spec()
    resume_payload = None
    if cfg.resume:
        last = os.path.join(cfg.out, "last.pt")
        if not os.path.exists(last):
            raise EdgecxrError(f"--resume: {last} not found; start without --resume")
        resume_payload = load_checkpoint(last)
        spec = PreprocessSpec.from_dict(resume_payload["contract"]["preprocess"])

    index = load_run_index(cfg, dist)
    if dist.is_main:
        write_split_csv(os.path.join(cfg.out, "split.csv"), index)
    classes = index.classes
    show = cfg.progress and dist.is_main
    train_ds = CXRDataset(index.root, index.of_split("train"), classes, spec, AugmentSpec() if cfg.augment else None, cfg.seed, show, "loading train")
    val_ds = CXRDataset(index.root, index.of_split("val"), classes, spec, None, cfg.seed, show, "loading val")
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise EdgecxrError(f"{cfg.data}: the split left {len(train_ds)} training and {len(val_ds)} validation images; add images or change --split")
    skipped = index.skipped + train_ds.skipped + val_ds.skipped

    model = build_model(cfg.arch, len(classes), pretrained=cfg.pretrained, weights=cfg.weights)
    model, opt, sched, (start_epoch, best_loss, history, bad_epochs) = prepare_model(model, cfg, resume_payload, "state_dict", dist.device)
    qat = None
    if cfg.qat:
        from edgecxr.convert.int8_target import resolve_target
        from edgecxr.train.qat import enable_qat

        qat = enable_qat(model, cfg.arch, weight_qmax=resolve_target(cfg.qat_target).weight_qmax)
    ddp_model = dist.wrap(model)

    weights = None
    if cfg.class_weights:
        counts = np.bincount(train_ds.labels, minlength=len(classes)).astype(np.float32)
        weights = torch.tensor(counts.sum() / (len(classes) * np.maximum(counts, 1)), dtype=torch.float32)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    sampler = dist.sampler(train_ds, cfg.seed)
    train_loader = DataLoader(train_ds, cfg.batch_size, shuffle=sampler is None, sampler=sampler, num_workers=cfg.workers,
                              drop_last=len(train_ds) > cfg.batch_size, generator=torch.Generator().manual_seed(cfg.seed))
    val_loader = DataLoader(val_ds, max(cfg.batch_size, 64), shuffle=False, num_workers=cfg.workers)

    contract = make_contract(cfg.arch, classes, spec, source={
        "data_root": index.root, "split_csv": os.path.abspath(os.path.join(cfg.out, "split.csv")),
    })
    config_dict = asdict(cfg)
    log_lines = [f"classes: {classes}", "split counts: " + json.dumps({s: class_counts(index.of_split(s)) for s in ("train", "val", "test")})]
    log_lines += [f"skipped {f}: {why}" for f, why in skipped]
    t_start = time.perf_counter()
    seen_images = 0
    for epoch in range(start_epoch, cfg.epochs):
        train_ds.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        ddp_model.train()
        if qat is not None:
            qat.freeze_batch_norm()
        t0 = time.perf_counter()
        run_loss, run_correct, run_n = 0.0, 0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not show, leave=False)
        for x, y in bar:
            x = x.to(dist.device).contiguous(memory_format=torch.channels_last)
            y = y.to(dist.device)
            opt.zero_grad(set_to_none=True)
            logits = ddp_model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            opt.step()
            run_loss += float(loss.detach()) * len(y)
            run_correct += int((logits.argmax(1) == y).sum())
            run_n += len(y)
            bar.set_postfix(loss=f"{run_loss / run_n:.3f}", acc=f"{run_correct / run_n:.3f}", img_s=f"{run_n / (time.perf_counter() - t0):.1f}")
        sched.step()
        epoch_time = time.perf_counter() - t0
        seen_images += run_n * dist.world_size
        val_loss, vy, vp = evaluate_loss(model, val_loader, loss_fn)
        row = epoch_row(epoch, run_loss / max(run_n, 1), run_correct / max(run_n, 1), val_loss, vy, vp.argmax(1),
                        len(classes), opt.param_groups[0]["lr"], epoch_time, run_n * dist.world_size)
        history.append(row)
        improved, best_loss, bad_epochs, line = close_epoch(row, best_loss, bad_epochs, "val")
        log_lines.append(line)
        if dist.is_main:
            tqdm.write(line)
            extra = {"train_config": config_dict, "epoch": epoch, "history": history, "best_val_loss": best_loss}
            if improved:
                save_checkpoint(os.path.join(cfg.out, "best.pt"), model, contract, **extra)
            save_checkpoint(os.path.join(cfg.out, "last.pt"), model, contract, optimizer=opt.state_dict(),
                            scheduler=sched.state_dict(), bad_epochs=bad_epochs, **extra)
            write_epoch_log(os.path.join(cfg.out, "epochs.csv"), history)
        if cfg.early_stop and bad_epochs >= cfg.early_stop:
            log_lines.append(f"early stop: validation loss did not improve for {cfg.early_stop} epochs")
            break
    summary = run_summary("supervised", cfg.arch, classes, history, time.perf_counter() - t_start, seen_images, dist.world_size,
                          (len(train_ds), len(val_ds), len(index.of_split("test"))), skipped, config_dict)
    if dist.is_main:
        write_json(os.path.join(cfg.out, "metrics.json"), summary)
        write_text(os.path.join(cfg.out, "train.log"), "\n".join(log_lines) + "\n")
        from edgecxr.train.plots import plot_curves

        plot_curves(history, os.path.join(cfg.out, "curves.png"), title=f"{cfg.arch} on {os.path.basename(index.root.rstrip('/'))}")
    dist.close()
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


def run_summary(method: str, arch: str, classes: list[str], history: list[dict], train_seconds: float, seen_images: int,
                world_size: int, sizes: tuple[int, int, int], skipped: list[tuple[str, str]], config: dict) -> dict:
    """The ``metrics.json`` keys every training method writes (the CLI and the README tables read them)."""
    best = min(history, key=lambda r: r["val_loss"]) if history else {}
    return {
        "arch": arch, "classes": classes, "method": method, "epochs_run": len(history), "best_epoch": best.get("epoch"),
        "best_val_loss": best.get("val_loss"), "best_val_acc": best.get("val_acc"), "best_val_macro_f1": best.get("val_macro_f1"),
        "train_seconds": train_seconds, "images_per_s": seen_images / train_seconds if train_seconds > 0 else None,
        "world_size": world_size, "n_train": sizes[0], "n_val": sizes[1], "n_test": sizes[2],
        "skipped_files": [{"file": f, "reason": why} for f, why in skipped], "config": config,
    }


def write_epoch_log(path: str, history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    write_text(path, buf.getvalue())
