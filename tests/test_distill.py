"""Knowledge distillation (``edgecxr train --teacher``): the loss by hand, the teacher's view, the CLI end to end."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import run_cli

from edgecxr.data.folders import read_split_csv
from edgecxr.device.preprocess import PreprocessSpec
from edgecxr.models.checkpoint import file_sha256
from edgecxr.train.dataset import AugmentSpec, CXRDataset
from edgecxr.train.distill import distillation_loss
from edgecxr.train.teacher import WithTeacher


def _softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _by_hand(student: list[list[float]], teacher: list[list[float]], labels: list[int], t: float, alpha: float) -> float:
    """alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE, batch means, in plain floats."""
    soft = hard = 0.0
    for s, te, y in zip(student, teacher, labels):
        ps, pt = _softmax(s, t), _softmax(te, t)
        soft += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
        hard += -math.log(_softmax(s, 1.0)[y])
    n = len(labels)
    return alpha * t * t * soft / n + (1 - alpha) * hard / n


@pytest.mark.parametrize("t,alpha", [(1.0, 0.5), (2.0, 0.25), (4.0, 0.9), (3.0, 0.0), (3.0, 1.0)])
def test_distillation_loss_matches_a_hand_computation(t, alpha):
    student = [[1.0, 2.0, 0.5], [-0.3, 0.1, 2.2]]
    teacher = [[2.0, 0.0, 1.0], [0.4, -1.5, 3.0]]
    labels = [1, 2]
    got = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), t, alpha)
    assert float(got) == pytest.approx(_by_hand(student, teacher, labels, t, alpha), rel=1e-5)


def test_distillation_loss_is_cross_entropy_when_the_teacher_agrees_with_the_student():
    logits = torch.tensor([[0.2, 1.7, -0.4], [1.1, 0.0, 0.3]])
    labels = torch.tensor([0, 2])
    got = distillation_loss(logits, logits.clone(), labels, temperature=4.0, alpha=0.6)
    assert float(got) == pytest.approx(0.4 * float(F.cross_entropy(logits, labels)), rel=1e-5)


def test_distillation_loss_sends_no_gradient_to_the_teacher():
    student = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 2.0, 0.0]], requires_grad=True)
    distillation_loss(student, teacher, torch.tensor([1]), 2.0, 0.5).backward()
    assert teacher.grad is None and student.grad is not None and float(student.grad.abs().sum()) > 0


@pytest.mark.parametrize("t,alpha", [(0.0, 0.5), (2.0, 1.5), (2.0, -0.1)])
def test_distillation_loss_refuses_settings_outside_their_range(t, alpha):
    with pytest.raises(ValueError):
        distillation_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), t, alpha)


def test_live_teacher_view_is_the_students_augmented_image_at_the_teachers_size(trained_run, synthetic_data):
    """The teacher's copy of an image gets the same flip, angle and brightness as the student's, at its own size."""
    index = read_split_csv(str(trained_run / "split.csv"), str(synthetic_data))
    samples, classes = index.of_split("train")[:6], index.classes
    aug = AugmentSpec(hflip=0.5, rotate_deg=40.0, brightness=0.2, contrast=0.2)
    student = CXRDataset(index.root, samples, classes, PreprocessSpec(size=32), aug, seed=3, progress=False)
    teacher = CXRDataset(index.root, samples, classes, PreprocessSpec(size=64), aug, seed=3, progress=False)
    pairs = WithTeacher(student, teacher_view=teacher)

    def gap(i: int, epoch_student: int, epoch_teacher: int) -> float:
        pairs.set_epoch(epoch_student)
        x = pairs[i][0]
        pairs.set_epoch(epoch_teacher)
        t = pairs[i][2]
        assert t.shape[-1] == 64
        return float((F.interpolate(t[None], size=32, mode="area")[0] - x).abs().mean())

    same = [gap(i, 5, 5) for i in range(len(samples))]
    other = [gap(i, 5, 6) for i in range(len(samples))]
    assert max(same) < 0.5 * (sum(other) / len(other)), (same, other)


def test_train_with_teacher_records_the_teacher_in_its_checkpoint(trained_run, synthetic_data, tmp_path):
    """A student at another input size than its teacher (32 px MobileNetV2 -> 40 px SqueezeNet) trains and says what taught it.

    ``live`` here (the teacher's own view of each augmented batch); the torchrun test below runs ``cache``.
    """
    source = "live"
    out = tmp_path / source
    teacher = str(trained_run / "best.pt")
    run_cli("train", "--data", str(synthetic_data), "--arch", "squeezenet1_1", "--out", str(out), "--epochs", "1", "--img-size", "40",
            "--batch-size", "16", "--split-csv", str(trained_run / "split.csv"), "--teacher", teacher, "--teacher-logits", source,
            "--distill-temperature", "3", "--distill-alpha", "0.6", "--quiet")
    payload = torch.load(out / "best.pt", weights_only=True)
    kd = payload["distillation"]
    assert kd["teacher"]["sha256"] == file_sha256(teacher) and kd["teacher"]["arch"] == "mobilenet_v2"
    assert kd["teacher"]["preprocess"]["size"] == 32 and payload["contract"]["preprocess"]["size"] == 40
    assert (kd["temperature"], kd["alpha"], kd["teacher_logits"]) == (3.0, 0.6, source)
    assert payload["train_config"]["teacher"] == teacher
    assert json.loads((out / "metrics.json").read_text())["distillation"] == kd
    run_cli("eval", str(out / "best.pt"), "--bootstrap", "0", "--quiet")


def test_teacher_with_other_classes_is_refused_in_one_line(trained_run, synthetic_data, tmp_path):
    data = tmp_path / "two_classes"
    for label in sorted(os.listdir(synthetic_data))[:2]:
        shutil.copytree(synthetic_data / label, data / label)
    proc = run_cli("train", "--data", str(data), "--arch", "squeezenet1_1", "--out", str(tmp_path / "o"), "--epochs", "1",
                   "--img-size", "32", "--teacher", str(trained_run / "best.pt"), "--quiet", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--teacher" in proc.stderr and "differ from the data's" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "best.pt").exists()


def test_torchrun_distillation_shares_the_teacher_cache(trained_run, synthetic_data, tmp_path):
    """Two processes each cache half the teacher logits and sum them (all_reduce over gloo), then train."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547", "-m", "edgecxr", "train",
           "--data", str(synthetic_data), "--arch", "squeezenet1_1", "--out", str(out), "--epochs", "1", "--img-size", "32",
           "--batch-size", "8", "--split-csv", str(trained_run / "split.csv"), "--teacher", str(trained_run / "best.pt"), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["distillation"]["teacher_logits"] == "cache"
    assert torch.load(out / "best.pt", weights_only=True)["contract"]["preprocess"]["size"] == 32


def test_training_from_scratch_gives_mobilenet_v3_batch_norm_the_default_momentum():
    """torchvision's MobileNetV3 BN momentum 0.01 left evaluation at chance after short from-scratch runs."""
    from edgecxr.models.factory import build_model
    from edgecxr.train.supervised import scratch_batch_norm

    model = build_model("mobilenet_v3_small", 3)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum < 0.1 for m in norms)
    scratch_batch_norm(model)
    assert all(m.momentum == 0.1 for m in norms)
