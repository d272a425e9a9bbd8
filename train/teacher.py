"""The teacher of ``edgecxr train --teacher CKPT``: where its logits come from during distillation.

The teacher is any edgecxr checkpoint with the data's classes. It sees each image
through *its own* preprocessing (its contract's size, equalisation, normalisation),
never a resized copy of the student's tensor, so it predicts exactly as it was
evaluated. Two sources for its logits (``--teacher-logits``):

* ``cache``: one teacher pass over the unaugmented training images before the first
  epoch, logits kept in memory for the run. Exact only without augmentation; with
  it, the student sees a flipped/rotated/brightened image and the teacher's answer
  for the plain one (the augmentations are small, the teacher nearly invariant).
* ``live``: a teacher forward per batch, on the same augmented image (the augmentation
  is seeded per (seed, epoch, image), so the teacher's copy gets the same flip,
  angle and brightness at its own size). Exact, at the price of a teacher forward
  every batch.

Which is the default, and why, is measured in docs/results/training.md. Under
``torchrun`` every process holds the teacher; ``cache`` splits the pass between the
processes and sums the shares.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgecxr.device.contract import Contract
from edgecxr.errors import EdgecxrError
from edgecxr.models.checkpoint import file_sha256
from edgecxr.models.factory import load_model
from edgecxr.train.dataset import CXRDataset
from edgecxr.train.distill import DistillLoss
from edgecxr.train.distributed import Dist

LOGIT_SOURCES = ("cache", "live")


@dataclass
class Teacher:
    model: nn.Module
    contract: Contract
    path: str

    def record(self) -> dict:
        """What a distilled checkpoint says about its teacher (plain data)."""
        return {"path": self.path, "sha256": file_sha256(self.path), "arch": self.contract.arch,
                "preprocess": self.contract.preprocess.to_dict()}


def load_teacher(path: str, classes: list[str], device: torch.device) -> Teacher:
    """The frozen teacher; one-line error when its classes are not the data's."""
    model, contract = load_model(path)
    if list(contract.classes) != list(classes):
        raise EdgecxrError(f"--teacher {path}: its classes {list(contract.classes)} differ from the data's {list(classes)}; "
                           "distil from a model trained on the same classes")
    for p in model.parameters():
        p.requires_grad = False
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    return Teacher(model, contract, path)


class WithTeacher(Dataset):
    """The training dataset's ``(x, label)`` plus what the teacher needs for that image: ``(x, label, t)``.

    ``t`` is the cached teacher logits (``cache``) or the teacher's own view of the
    same augmented image (``live``).
    """

    def __init__(self, student: CXRDataset, logits: torch.Tensor | None = None, teacher_view: CXRDataset | None = None) -> None:
        self.student, self.logits, self.teacher_view = student, logits, teacher_view
        self.labels = student.labels

    def __len__(self) -> int:
        return len(self.student)

    def set_epoch(self, epoch: int) -> None:
        self.student.set_epoch(epoch)
        if self.teacher_view is not None:
            self.teacher_view.set_epoch(epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        x, y = self.student[i]
        if self.logits is not None:
            return x, y, self.logits[i]
        return x, y, x if self.teacher_view is None else self.teacher_view[i][0]


class Distiller:
    """The teacher, its logit source and the loss: what supervised training calls per batch."""

    def __init__(self, teacher: Teacher, loss: DistillLoss, source: str, dataset: WithTeacher, cache_seconds: float) -> None:
        self.teacher, self.loss_fn, self.source, self.dataset, self.cache_seconds = teacher, loss, source, dataset, cache_seconds

    @classmethod
    def start(cls, cfg, train_ds: CXRDataset, samples: list, root: str, classes: list[str], dist: Dist,
              weight: torch.Tensor | None, progress: bool) -> Distiller:
        """Load the teacher and prepare its logit source for ``train_ds`` (``cfg`` is the run's TrainConfig)."""
        if cfg.teacher_logits not in LOGIT_SOURCES:
            raise EdgecxrError(f"--teacher-logits {cfg.teacher_logits!r}: choose {' or '.join(LOGIT_SOURCES)}")
        teacher = load_teacher(cfg.teacher, classes, dist.device)
        loss = DistillLoss(cfg.distill_temperature, cfg.distill_alpha, weight).to(dist.device)
        same_view = teacher.contract.preprocess == train_ds.spec
        if cfg.teacher_logits == "live":
            view = None if same_view else _teacher_view(train_ds, samples, root, classes, teacher, train_ds.augment_spec, cfg.seed, progress)
            return cls(teacher, loss, "live", WithTeacher(train_ds, teacher_view=view), 0.0)
        t0 = time.perf_counter()
        plain = train_ds if same_view and train_ds.augment_spec is None else \
            _teacher_view(train_ds, samples, root, classes, teacher, None, cfg.seed, progress)
        logits = cached_logits(teacher.model, plain, len(classes), dist, max(cfg.batch_size, 64))
        return cls(teacher, loss, "cache", WithTeacher(train_ds, logits=logits), time.perf_counter() - t0)

    def loss(self, student_logits: torch.Tensor, labels: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.source == "live":
            with torch.no_grad():
                t = self.teacher.model(t.to(student_logits.device).contiguous(memory_format=torch.channels_last))
        return self.loss_fn(student_logits, labels, t.to(student_logits.device))

    def record(self) -> dict:
        return {"teacher": self.teacher.record(), "temperature": self.loss_fn.temperature, "alpha": self.loss_fn.alpha,
                "teacher_logits": self.source, "cache_seconds": self.cache_seconds}


def _teacher_view(train_ds: CXRDataset, samples: list, root: str, classes: list[str], teacher: Teacher, augment, seed: int,
                  progress: bool) -> CXRDataset:
    """The training images through the teacher's preprocessing (``augment``: the student's, or None for the cache)."""
    view = CXRDataset(root, samples, classes, teacher.contract.preprocess, augment, seed, progress, "loading teacher view")
    if view.files != train_ds.files:
        raise EdgecxrError("--teacher: the teacher's preprocessing read a different set of training images than the student's")
    return view


@torch.no_grad()
def cached_logits(model: nn.Module, dataset: Dataset, num_classes: int, dist: Dist, batch_size: int) -> torch.Tensor:
    """Teacher logits for every image of ``dataset`` (index order); under DDP each process does every ``world_size``-th image."""
    mine = list(range(dist.rank, len(dataset), dist.world_size))
    logits = torch.zeros(len(dataset), num_classes)
    loader = DataLoader(torch.utils.data.Subset(dataset, mine), batch_size, shuffle=False)
    done = 0
    for x, _ in loader:
        rows = torch.as_tensor(mine[done:done + len(x)], dtype=torch.long)
        logits[rows] = model(x.to(dist.device).contiguous(memory_format=torch.channels_last)).float().cpu()
        done += len(x)
    if dist.world_size > 1:
        import torch.distributed as tdist

        shared = logits.to(dist.device)
        tdist.all_reduce(shared)  # each row was filled by exactly one process, zeros elsewhere
        logits = shared.cpu()
    return logits
