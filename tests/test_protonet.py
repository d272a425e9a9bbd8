"""Prototypical networks: episodes, the prototype fold, and ``edgecxr train --method protonet`` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import run_cli

from edgecxr.data.episodes import EpisodeDataset, EpisodeSpec, check_episode_fit, mean_ci95, per_class_subset
from edgecxr.data.folders import Sample
from edgecxr.errors import EdgecxrError
from edgecxr.models.proto_encoder import ProtoEncoder, squared_distances
from edgecxr.train.proto_model import fold_into_classifier


class _Labelled(torch.utils.data.Dataset):
    """Item i is a 1x2x2 tensor filled with i, so episodes can be traced back to indices."""

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i)), self.labels[i]


LABELS = [c for c in range(4) for _ in range(12)]


def _ids(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t[:, 0, 0, 0]]


def test_episodes_are_reproducible_and_support_query_disjoint():
    spec = EpisodeSpec(n_way=3, k_shot=2, q_query=3, episodes=5)
    a = EpisodeDataset(_Labelled(LABELS), LABELS, spec, seed=7)
    b = EpisodeDataset(_Labelled(LABELS), LABELS, spec, seed=7)
    for e in range(len(a)):
        sa, qa, ya, ca = a[e]
        sb, qb, yb, cb = b[e]
        assert torch.equal(sa, sb) and torch.equal(qa, qb) and torch.equal(ca, cb)
        assert sa.shape[0] == 6 and qa.shape[0] == 9
        assert set(_ids(sa)).isdisjoint(_ids(qa))
        assert ya.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        # support and query of episode-class j really come from dataset class ca[j]
        for j, c in enumerate(ca.tolist()):
            assert {LABELS[i] for i in _ids(sa)[2 * j: 2 * j + 2] + _ids(qa)[3 * j: 3 * j + 3]} == {c}


def test_training_episodes_change_with_epoch_evaluation_episodes_do_not():
    spec = EpisodeSpec(n_way=2, k_shot=2, q_query=2, episodes=3)
    ds = EpisodeDataset(_Labelled(LABELS), LABELS, spec, seed=0)
    first = [ds.indices(e)[0].tolist() for e in range(3)]
    ds.set_epoch(1)
    assert [ds.indices(e)[0].tolist() for e in range(3)] != first


def test_episodes_split_across_processes_cover_every_episode_once():
    spec = EpisodeSpec(n_way=2, k_shot=1, q_query=1, episodes=5)
    r0 = EpisodeDataset(_Labelled(LABELS), LABELS, spec, rank=0, world_size=2)
    r1 = EpisodeDataset(_Labelled(LABELS), LABELS, spec, rank=1, world_size=2)
    assert sorted(r0.episode_ids + r1.episode_ids) == list(range(5))


def test_split_too_small_for_an_episode_is_refused_with_the_numbers():
    with pytest.raises(EdgecxrError, match=r"k_shot \+ q_query = 10.*\[3, 3, 3\]"):
        check_episode_fit([0, 0, 0, 1, 1, 1, 2, 2, 2], EpisodeSpec(3, 5, 5, 20), "validation split")


def test_train_shots_subset_takes_exactly_k_per_class_and_is_stable():
    samples = [Sample(f"{c}/{i}.png", c, "train") for c in ("A", "B", "C") for i in range(20)]
    sub = per_class_subset(samples, 4, seed=3)
    assert [s.label for s in sub].count("A") == 4 and len(sub) == 12
    assert sub == per_class_subset(list(reversed(samples)), 4, seed=3)
    assert sub != per_class_subset(samples, 4, seed=4)


def test_mean_ci95_is_mean_plus_minus_196_standard_errors():
    m, lo, hi = mean_ci95([0.5, 0.7, 0.9, 0.7])
    se = np.std([0.5, 0.7, 0.9, 0.7], ddof=1) / 2
    assert m == pytest.approx(0.7) and hi - m == pytest.approx(1.96 * se) and m - lo == pytest.approx(1.96 * se)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "squeezenet1_1"])
def test_folded_classifier_matches_the_distance_computation(arch):
    """Predictions and softmax probabilities of the folded linear layer equal softmax(-||e - p||^2)."""
    from edgecxr.train.proto_model import build_encoder

    torch.manual_seed(0)
    enc = build_encoder(arch, 3, embed_dim=128).eval()
    x = torch.randn(10, 3, 64, 64)
    with torch.no_grad():
        emb = enc(x)
        protos = emb[:3] + 0.3 * torch.randn(3, 128)  # prototypes near some embeddings: non-trivial decisions
        p_dist = torch.softmax(-squared_distances(emb, protos), 1)
        folded = fold_into_classifier(enc, protos, arch)
        p_fold = torch.softmax(folded(x), 1)
    assert isinstance(folded.head[1], torch.nn.Linear) and folded.head[1].out_features == 3
    assert torch.equal(p_dist.argmax(1), p_fold.argmax(1))
    assert torch.allclose(p_dist, p_fold, atol=1e-4)
    # the folded logits differ from -distance only by the per-image constant ||e||^2
    diff = folded(x).detach() - (-squared_distances(emb, protos))
    assert torch.allclose(diff, (emb ** 2).sum(1, keepdim=True).expand_as(diff), rtol=1e-4, atol=1e-2)


def test_protonet_encoder_has_a_128_dimensional_head_on_any_backbone():
    from edgecxr.train.proto_model import build_encoder

    enc = build_encoder("efficientnet_lite0", 3)
    assert isinstance(enc, ProtoEncoder) and enc.embed.out_features == 128 and enc.embed.in_features == enc.feature_dim


def test_protonet_lr_schedule_defaults_to_half_every_10_epochs_unless_flags_given():
    from edgecxr.train.config import TrainConfig
    from edgecxr.train.protonet import ProtoConfig, schedule_config

    cfg = schedule_config(TrainConfig(data="d", arch="mobilenet_v2", out="o"), ProtoConfig())
    assert (cfg.step_size, cfg.gamma) == (10, 0.5)
    cfg = schedule_config(TrainConfig(data="d", arch="mobilenet_v2", out="o", step_size=3, gamma=0.2), ProtoConfig())
    assert (cfg.step_size, cfg.gamma) == (3, 0.2)


@pytest.fixture(scope="module")
def proto_run(synthetic_data, tmp_path_factory):
    """A few-shot protonet run (8 training images per class, 3-way 2-shot 2-query) at 32 px."""
    out = tmp_path_factory.mktemp("proto") / "run"
    proc = run_cli("train", "--data", str(synthetic_data), "--method", "protonet", "--arch", "mobilenet_v2", "--out", str(out),
                   "--epochs", "2", "--img-size", "32", "--split", "60/20/20", "--k-shot", "2", "--q-query", "2",
                   "--episodes", "3", "--train-shots", "8", "--quiet")
    return out, proc


def test_protonet_run_writes_an_ordinary_checkpoint_and_the_prototypes(proto_run):
    from edgecxr.models.factory import load_model
    from edgecxr.models.proto_encoder import load_protonet

    out, proc = proto_run
    assert "done: 2 epochs" in proc.stdout
    model, contract = load_model(str(out / "best.pt"))
    assert contract.method == "protonet" and contract.num_classes == 3
    enc, protos, payload = load_protonet(str(out / "protonet.pt"))
    assert protos.shape == (3, 128) and payload["prototype_images"] == 24
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("epochs_run", "train_seconds", "best_epoch", "best_val_loss", "best_val_macro_f1", "skipped_files"):
        assert key in metrics
    assert metrics["n_train"] == 24 and len(metrics["train_files"]) == 24
    assert metrics["fold_check"]["max_abs_prob_diff"] < 1e-4
    te = metrics["test_episodes"]
    assert te["episodes"] == 3 and te["accuracy_ci95"][0] <= te["mean_accuracy"] <= te["accuracy_ci95"][1]
    assert (out / "curves.png").stat().st_size > 0 and (out / "split.csv").exists()


def test_protonet_checkpoint_goes_through_eval_like_any_model(proto_run):
    out, _ = proto_run
    proc = run_cli("eval", str(out / "best.pt"), "--bootstrap", "20", "--quiet", "--out", str(out / "eval_test"))
    report = json.loads((out / "eval_test" / "eval.json").read_text())
    assert report["n_images"] == 18 and "macro_f1" in report and "wrote" in proc.stdout


def test_episode_report_gives_mean_accuracy_with_ci_on_any_split(proto_run):
    from edgecxr.data.episodes import episode_report

    out, _ = proto_run
    rep = episode_report(str(out / "protonet.pt"), split="val", episodes=4)
    assert rep["episodes"] == 4 and 0 <= rep["mean_accuracy"] <= 1 and rep["split"] == "val"


def test_more_ways_than_classes_is_one_line_error(synthetic_data, tmp_path):
    proc = run_cli("train", "--data", str(synthetic_data), "--method", "protonet", "--out", str(tmp_path / "r"), "--n-way", "4",
                   "--img-size", "32", "--quiet", check=False)
    assert proc.returncode == 2 and "--n-way 4" in proc.stderr and "Traceback" not in proc.stderr


def test_precise_bn_sets_running_statistics_to_those_of_the_training_batches():
    from edgecxr.train.proto_model import precise_bn

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(2, momentum=0.1)
    model = torch.nn.Sequential(bn)
    batches = [3.0 + 0.1 * torch.randn(8, 2, 4, 4) for _ in range(4)]
    assert precise_bn(model.eval(), batches) == 4
    allx = torch.cat(batches)
    assert torch.allclose(bn.running_mean, allx.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, 0.01 * torch.ones(2), rtol=0.2)
    assert bn.momentum == 0.1 and not bn.training  # settings restored


@pytest.mark.slow
def test_protonet_under_torchrun_two_processes_agree_on_validation(synthetic_data, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "edgecxr", "train",
                           "--data", str(synthetic_data), "--method", "protonet", "--out", str(out), "--epochs", "2", "--img-size", "32",
                           "--split", "60/20/20", "--k-shot", "2", "--q-query", "2", "--episodes", "4", "--quiet"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = [ln for ln in proc.stdout.splitlines() if ln.startswith("done:")]
    assert len(done) == 2 and done[0] == done[1]  # same validation numbers on both ranks
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2


def test_kshot_split_gives_supervised_training_the_same_images_as_train_shots(tmp_path):
    import importlib.util
    from pathlib import Path

    from edgecxr.data.folders import DatasetIndex, read_split_csv, write_split_csv

    spec = importlib.util.spec_from_file_location("protonet_table", Path(__file__).resolve().parents[1] / "scripts" / "reproduce" / "protonet_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    samples = [Sample(f"{c}/{i}.png", c, "train" if i < 15 else "test", f"h{c}{i}") for c in ("A", "B") for i in range(20)]
    write_split_csv(str(tmp_path / "split.csv"), DatasetIndex(str(tmp_path), ["A", "B"], samples, []))
    mod.kshot_split(str(tmp_path / "split.csv"), 4, str(tmp_path / "k4.csv"), seed=0)
    back = read_split_csv(str(tmp_path / "k4.csv"), str(tmp_path))
    assert {s.file for s in back.of_split("train")} == {s.file for s in per_class_subset(samples[:15] + samples[20:35], 4, 0)}
    assert len(back.of_split("test")) == 10 and len(back.of_split("unused")) == 22


def test_eval_of_a_protonet_run_adds_episode_accuracy(tmp_path, synthetic_data):
    import json

    from conftest import run_cli

    out = tmp_path / "proto"
    run_cli("train", "--method", "protonet", "--data", str(synthetic_data), "--arch", "squeezenet1_1", "--out", str(out),
            "--epochs", "1", "--img-size", "32", "--split", "60/20/20", "--k-shot", "2", "--q-query", "2", "--episodes", "2", "--quiet")
    proc = run_cli("eval", str(out / "best.pt"), "--out", str(tmp_path / "ev"), "--bootstrap", "0", "--quiet")
    rep = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert rep["episodes"]["k_shot"] == 2 and 0 <= rep["episodes"]["mean_accuracy"] <= 1
    assert "episode accuracy" in proc.stdout


def test_protonet_resume_continues_from_the_last_epoch(tmp_path, synthetic_data):
    from conftest import run_cli

    out = tmp_path / "proto"
    args = ["train", "--method", "protonet", "--data", str(synthetic_data), "--arch", "squeezenet1_1", "--out", str(out),
            "--img-size", "32", "--split", "60/20/20", "--k-shot", "2", "--q-query", "2", "--episodes", "2", "--quiet"]
    run_cli(*args, "--epochs", "1")
    run_cli(*args, "--epochs", "2", "--resume")
    rows = (out / "epochs.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 and rows[1].startswith("1,") and rows[2].startswith("2,")
