"""``edgecxr train --method protonet``: prototypical networks trained on episodes.

Each epoch runs ``episodes`` N-way K-shot Q-query training episodes (fresh draws per
epoch, augmented); validation runs the same number of fixed episodes from the
validation split, and the encoder with the lowest validation episode loss is kept.
At the end the prototypes are computed from the training images (all of them, or
the ``--train-shots`` subset) and folded into a plain classifier, ``best.pt``, which
every other stage uses like a supervised checkpoint. ``protonet.pt`` keeps the
encoder and prototypes; ``metrics.json`` adds the mean test-episode accuracy with a
95% confidence interval.

Run files: ``best.pt``, ``protonet.pt``, ``protonet_last.pt`` (for ``--resume``),
``split.csv``, ``metrics.json``, ``epochs.csv``, ``train.log``, ``curves.png``. What
one epoch means lives here; the run around it is ``edgecxr.train.run``, the
episodes and the encoder file are the core modules ``edgecxr.data.episodes`` and
``edgecxr.models.proto_encoder`` (``eval`` uses them too).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from itertools import islice

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from edgecxr.data.episodes import (
    TEST_SEED_OFFSET,
    VAL_SEED_OFFSET,
    EpisodeDataset,
    EpisodeSpec,
    episode_summary,
    per_class_subset,
    run_episodes,
)
from edgecxr.device.contract import Contract
from edgecxr.errors import EdgecxrError
from edgecxr.models.checkpoint import read_payload, save_checkpoint
from edgecxr.models.proto_encoder import PROTONET_FORMAT, load_protonet, save_protonet, squared_distances, support_prototypes
from edgecxr.train.config import TrainConfig
from edgecxr.train.dataset import CXRDataset
from edgecxr.train.proto_model import build_encoder, class_prototypes, embed_dataset, fold_into_classifier, precise_bn
from edgecxr.train.run import (
    EpochStats,
    EpochSteps,
    Run,
    Validation,
    begin_run,
    finish_run,
    prepare_model,
    run_epochs,
    run_summary,
)

BN_EPISODES = 10  # training episodes whose batch statistics become BatchNorm's running statistics (precise_bn)


@dataclass
class ProtoConfig:
    n_way: int = 3
    k_shot: int = 5
    q_query: int = 5
    episodes: int = 20
    train_shots: int | None = None
    embed_dim: int = 128
    step_size: int = 10  # protonet StepLR default: x0.5 every 10 epochs
    gamma: float = 0.5

    def episode_spec(self) -> EpisodeSpec:
        return EpisodeSpec(self.n_way, self.k_shot, self.q_query, self.episodes)


def schedule_config(cfg: TrainConfig, proto: ProtoConfig) -> TrainConfig:
    """The protonet StepLR defaults (x0.5 / 10 epochs) unless --step-size/--gamma were given."""
    step = proto.step_size if cfg.step_size is None else cfg.step_size
    gamma = proto.gamma if cfg.gamma is None else cfg.gamma
    return replace(cfg, step_size=step, gamma=gamma)


def _episode_loss(model: nn.Module, sx: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, spec: EpisodeSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # one forward over support + query: one BatchNorm batch, and one DDP forward per step
    x = torch.cat([sx, qx]).to(device).contiguous(memory_format=torch.channels_last)
    emb = model(x)
    protos = support_prototypes(emb[: len(sx)], spec.n_way, spec.k_shot)
    logits = -squared_distances(emb[len(sx):], protos)
    return nn.functional.cross_entropy(logits, qy.to(device)), logits


def _read_last(path: str) -> dict:
    return read_payload(path, PROTONET_FORMAT, "protonet file", "; start without --resume")


def train_protonet(cfg: TrainConfig, proto: ProtoConfig) -> dict:
    """Train, fold and evaluate; returns the same summary keys as supervised ``train``."""
    cfg = schedule_config(cfg, proto)  # stored in train_config with the step size and factor that ran
    ep_spec = proto.episode_spec()
    run = begin_run(cfg, "protonet_last.pt", _read_last)
    classes = run.classes
    if ep_spec.n_way > len(classes):
        raise EdgecxrError(f"--n-way {ep_spec.n_way}: the dataset has only {len(classes)} classes; use --n-way {len(classes)} or fewer")
    train_samples = run.index.of_split("train")
    if proto.train_shots:
        train_samples = per_class_subset(train_samples, proto.train_shots, cfg.seed)
    train_ds, val_ds = run.datasets(train_samples)
    dist = run.dist
    train_eps = EpisodeDataset(train_ds, train_ds.labels, ep_spec, cfg.seed, "training split" + (f" (--train-shots {proto.train_shots})" if proto.train_shots else ""),
                               dist.rank, dist.world_size)
    bn_eps = EpisodeDataset(train_ds, train_ds.labels, ep_spec, cfg.seed, "training split")
    val_eps = EpisodeDataset(val_ds, val_ds.labels, ep_spec, cfg.seed + VAL_SEED_OFFSET, "validation split")

    encoder = build_encoder(cfg.arch, len(classes), proto.embed_dim, pretrained=cfg.pretrained, weights=cfg.weights)
    encoder, opt, sched, progress = prepare_model(encoder, cfg, run.resume_payload, "encoder_state", dist.device)
    model = dist.wrap(encoder)

    contract = run.contract("protonet")
    config_dict, proto_dict = asdict(cfg), asdict(proto)
    run.start_log(train_ds, val_ds, f"episodes: {ep_spec.n_way}-way {ep_spec.k_shot}-shot {ep_spec.q_query}-query, {ep_spec.episodes} per epoch"
                  + (f"; training images limited to {proto.train_shots} per class ({len(train_ds)} in all)" if proto.train_shots else ""))
    steps = EpochSteps(
        train_epoch=partial(train_epoch, run, model, train_eps, opt),
        validate=partial(validate, run, encoder, bn_eps, val_eps),
        save=lambda path, **extra: save_protonet(path, encoder, None, contract.to_dict(), **extra),
        best_file="protonet.pt", last_file="protonet_last.pt", extra={"train_config": config_dict, "proto_config": proto_dict},
        val_name="val episodes", stop_what="validation episode loss",
    )
    progress = run_epochs(run, opt, sched, progress, steps)
    summary = run_summary("protonet", run, progress, train_ds, val_ds, config_dict)
    summary["proto_config"] = proto_dict
    if dist.is_main:
        summary.update(_finish(run, proto, ep_spec, contract, train_ds, val_ds))
    title = f"{cfg.arch} protonet ({ep_spec.n_way}-way {ep_spec.k_shot}-shot) on {os.path.basename(run.index.root.rstrip('/'))}"
    return finish_run(run, summary, progress.history, title)


def train_epoch(run: Run, model: nn.Module, episodes: EpisodeDataset, opt: torch.optim.Optimizer, epoch: int) -> EpochStats:
    """This epoch's training episodes (this process's share under DDP), one optimizer step each."""
    episodes.set_epoch(epoch)
    model.train()
    t0 = time.perf_counter()
    losses, accs, n_img = [], [], 0
    loader = DataLoader(episodes, batch_size=None, shuffle=False, num_workers=run.cfg.workers)
    bar = run.epoch_bar(loader, epoch, "episode")
    for sx, qx, qy, _cls in bar:
        opt.zero_grad(set_to_none=True)
        loss, logits = _episode_loss(model, sx, qx, qy, episodes.spec, run.dist.device)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        accs.append(float((logits.argmax(1).cpu() == qy).float().mean()))
        n_img += len(sx) + len(qx)
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", acc=f"{np.mean(accs):.3f}", img_s=f"{n_img / (time.perf_counter() - t0):.1f}")
    return EpochStats(float(np.mean(losses)), float(np.mean(accs)), n_img)


def validate(run: Run, encoder: nn.Module, bn_episodes: EpisodeDataset, val_episodes: EpisodeDataset, epoch: int) -> Validation:
    """Fixed validation episodes, after BatchNorm statistics are recomputed from training episodes.

    Every process recomputes them from the same (unsharded) episodes, so all of them
    validate the same network and take the same early-stopping decision.
    """
    bn_episodes.set_epoch(epoch)
    batches = islice(DataLoader(bn_episodes, batch_size=None), BN_EPISODES)
    precise_bn(encoder, (torch.cat([sx, qx]).to(run.dist.device) for sx, qx, _y, _c in batches))
    val = run_episodes(encoder, val_episodes, len(run.classes))
    return Validation(val["loss"], val["y"], val["pred"], accuracy=float(np.mean(val["accuracies"])))


def _finish(run: Run, proto: ProtoConfig, ep_spec: EpisodeSpec, contract: Contract, train_ds: CXRDataset, val_ds: CXRDataset) -> dict:
    """Best encoder -> training-set prototypes -> folded ``best.pt``; fold check; test episodes."""
    encoder, _none, payload = load_protonet(run.path("protonet.pt"))
    out = _fold(run, encoder, payload, contract, train_ds, val_ds)
    out.update(_test_episodes(run, encoder, ep_spec))
    if proto.train_shots:
        out["train_files"] = list(train_ds.files)
    return out


def _fold(run: Run, encoder: nn.Module, payload: dict, contract: Contract, train_ds: CXRDataset, val_ds: CXRDataset) -> dict:
    """Training-set prototypes folded into ``best.pt``, checked against the distances on val."""
    train_ds.augment_spec = None  # prototypes come from the images as they are, not augmented
    emb, labels = embed_dataset(encoder, train_ds, progress=run.show, desc="prototypes")
    protos = class_prototypes(emb, labels, len(run.classes))
    folded = fold_into_classifier(encoder, protos, run.cfg.arch)
    extra = {k: payload[k] for k in ("train_config", "proto_config", "epoch", "history", "best_val_loss")}
    save_protonet(run.path("protonet.pt"), encoder, protos, contract.to_dict(), prototype_images=len(labels), **extra)
    save_checkpoint(run.path("best.pt"), folded, contract, **extra)

    # the folded classifier must give the distance classifier's probabilities (up to float rounding)
    v_emb, _ = embed_dataset(encoder, val_ds)
    with torch.no_grad():
        p_dist = torch.softmax(-squared_distances(v_emb, protos), 1)
        x = torch.stack([val_ds[i][0] for i in range(len(val_ds))]).contiguous(memory_format=torch.channels_last)
        p_fold = torch.softmax(folded(x), 1)
    fold_diff = float((p_dist - p_fold).abs().max())
    fold_agree = float((p_dist.argmax(1) == p_fold.argmax(1)).float().mean())
    run.log_lines.append(f"prototypes from {len(labels)} training images; folded classifier vs distances on val: "
                         f"max |prob diff| {fold_diff:.2e}, top-1 agreement {fold_agree:.4f}")
    return {"prototype_images": len(labels), "fold_check": {"max_abs_prob_diff": fold_diff, "top1_agreement": fold_agree}}


def _test_episodes(run: Run, encoder: nn.Module, ep_spec: EpisodeSpec) -> dict:
    """Mean accuracy (95% CI) of the best encoder on test episodes, when the test split can fill them."""
    test_samples = run.index.of_split("test")
    if not test_samples:
        return {}
    test_ds = CXRDataset(run.index.root, test_samples, run.classes, run.spec, None, run.cfg.seed, run.show, "loading test")
    try:
        test_eps = EpisodeDataset(test_ds, test_ds.labels, ep_spec, run.cfg.seed + TEST_SEED_OFFSET, "test split")
    except EdgecxrError as exc:
        run.log_lines.append(f"test episodes skipped: {exc}")
        return {}
    res = run_episodes(encoder, test_eps, len(run.classes), progress=run.show, desc="test episodes")
    te = episode_summary(res["accuracies"], ep_spec, "test")
    run.log_lines.append(f"test episodes: mean accuracy {te['mean_accuracy']:.4f} "
                         f"[{te['accuracy_ci95'][0]:.4f}, {te['accuracy_ci95'][1]:.4f}] over {te['episodes']} episodes")
    if run.show:
        from edgecxr.progress import write as progress_write

        progress_write(run.log_lines[-1])
    return {"test_episodes": te}
