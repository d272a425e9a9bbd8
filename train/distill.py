"""The knowledge-distillation loss (Hinton et al. 2015), kept apart from where the teacher's logits come from.

Why distil here: the tiny backbones (SqueezeNet 1.1, MobileNetV3-Small) have no
ImageNet weights offline and learn poorly from 2400 hard labels alone, while a
strong teacher (the ImageNet-start MobileNetV2) exists. Its softened outputs say
*how* wrong each class is for each image ("this Normal looks a bit like Viral
pneumonia"), a richer target than one-hot labels.

The soft term is ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``: dividing
by ``T`` spreads the teacher's probability over the wrong classes, and the ``T^2``
keeps the soft term's gradient on the same scale as the hard term's whatever ``T``
(the gradient of the softened KL shrinks as ``1/T^2``). It is mixed with the
ordinary cross-entropy on the hard labels: ``alpha * soft + (1 - alpha) * hard``,
so the student still follows the labels where the teacher is wrong.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def check_settings(temperature: float, alpha: float) -> None:
    if not temperature > 0:
        raise ValueError(f"distillation temperature must be positive, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distillation alpha must lie in [0, 1], got {alpha}")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, labels)``, batch means.

    ``weight`` (per-class, ``--class-weights``) weights the hard term only: the teacher's
    soft targets already carry its view of every class.
    """
    check_settings(temperature, alpha)
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * temperature**2
    hard = F.cross_entropy(student_logits, labels, weight=weight)
    return alpha * soft + (1.0 - alpha) * hard


class DistillLoss(nn.Module):
    """:func:`distillation_loss` with its settings bound: ``loss(student_logits, labels, teacher_logits)``."""

    def __init__(self, temperature: float, alpha: float, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        check_settings(temperature, alpha)
        self.temperature = temperature
        self.alpha = alpha
        self.register_buffer("weight", weight)

    def forward(self, student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return distillation_loss(student_logits, teacher_logits, labels, self.temperature, self.alpha, self.weight)
