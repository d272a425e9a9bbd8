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
``split.csv``, ``metrics.json``, ``epochs.csv``, ``train.log``, ``curves.png``.
"""
from __future__ import annotations

import json
import os
import time
from itertools import islice
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from edgecxr.device.preprocess import PreprocessSpec
from edgecxr.train.dataset import AugmentSpec, CXRDataset
from edgecxr.train.proto_model import build_encoder, class_prototypes, embed_dataset, fold_into_classifier, precise_bn
from edgecxr.train.supervised import TrainConfig, close_epoch, epoch_row, load_run_index, prepare_model, run_summary, start_run, write_epoch_log
from torch import nn
from torch.utils.data import DataLoader

from edgecxr.atomic import write_json, write_text
from edgecxr.checkpoint import make_contract, read_payload, save_checkpoint
from edgecxr.data import class_counts, write_split_csv
from edgecxr.episodes import (
    TEST_SEED_OFFSET,
    VAL_SEED_OFFSET,
    EpisodeDataset,
    EpisodeSpec,
    episode_summary,
    per_class_subset,
    run_episodes,
)
from edgecxr.errors import EdgecxrError
from edgecxr.proto_encoder import PROTONET_FORMAT, load_protonet, save_protonet, squared_distances, support_prototypes

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


def train_protonet(cfg: TrainConfig, proto: ProtoConfig) -> dict:
    """Train, fold and evaluate; returns the same summary keys as supervised ``train``."""
    from tqdm import tqdm

    dist = start_run(cfg)
    sched_cfg = schedule_config(cfg, proto)
    spec = cfg.spec()
    ep_spec = proto.episode_spec()
    resume_payload = None
    last_path, proto_path = os.path.join(cfg.out, "protonet_last.pt"), os.path.join(cfg.out, "protonet.pt")
    if cfg.resume:
        if not os.path.exists(last_path):
            raise EdgecxrError(f"--resume: {last_path} not found; start without --resume")
        resume_payload = read_payload(last_path, PROTONET_FORMAT, "protonet file", "; start without --resume")
        spec = PreprocessSpec.from_dict(resume_payload["contract"]["preprocess"])

    index = load_run_index(cfg, dist)
    if dist.is_main:
        write_split_csv(os.path.join(cfg.out, "split.csv"), index)
    classes = index.classes
    if ep_spec.n_way > len(classes):
        raise EdgecxrError(f"--n-way {ep_spec.n_way}: the dataset has only {len(classes)} classes; use --n-way {len(classes)} or fewer")
    show = cfg.progress and dist.is_main
    train_samples = index.of_split("train")
    if proto.train_shots:
        train_samples = per_class_subset(train_samples, proto.train_shots, cfg.seed)
    train_ds = CXRDataset(index.root, train_samples, classes, spec, AugmentSpec() if cfg.augment else None, cfg.seed, show, "loading train")
    val_ds = CXRDataset(index.root, index.of_split("val"), classes, spec, None, cfg.seed, show, "loading val")
    train_eps = EpisodeDataset(train_ds, train_ds.labels, ep_spec, cfg.seed, "training split" + (f" (--train-shots {proto.train_shots})" if proto.train_shots else ""),
                               dist.rank, dist.world_size)
    bn_eps = EpisodeDataset(train_ds, train_ds.labels, ep_spec, cfg.seed, "training split")
    val_eps = EpisodeDataset(val_ds, val_ds.labels, ep_spec, cfg.seed + VAL_SEED_OFFSET, "validation split")
    skipped = index.skipped + train_ds.skipped + val_ds.skipped

    encoder = build_encoder(cfg.arch, len(classes), proto.embed_dim, pretrained=cfg.pretrained, weights=cfg.weights)
    encoder, opt, sched, (start_epoch, best_loss, history, bad_epochs) = prepare_model(encoder, sched_cfg, resume_payload, "encoder_state", dist.device)
    model = dist.wrap(encoder)

    source = {"data_root": index.root, "split_csv": os.path.abspath(os.path.join(cfg.out, "split.csv"))}
    contract = make_contract(cfg.arch, classes, spec, method="protonet", source=source)
    config_dict = {**asdict(cfg), "step_size": sched_cfg.step_size, "gamma": sched_cfg.gamma}
    proto_dict = asdict(proto)
    log_lines = [f"classes: {classes}", "split counts: " + json.dumps({s: class_counts(index.of_split(s)) for s in ("train", "val", "test")}),
                 f"episodes: {ep_spec.n_way}-way {ep_spec.k_shot}-shot {ep_spec.q_query}-query, {ep_spec.episodes} per epoch"
                 + (f"; training images limited to {proto.train_shots} per class ({len(train_ds)} in all)" if proto.train_shots else "")]
    log_lines += [f"skipped {f}: {why}" for f, why in skipped]
    t_start = time.perf_counter()
    seen_images = 0
    for epoch in range(start_epoch, cfg.epochs):
        train_eps.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        losses, accs, n_img = [], [], 0
        loader = DataLoader(train_eps, batch_size=None, shuffle=False, num_workers=cfg.workers)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="episode", disable=not show, leave=False)
        for sx, qx, qy, _cls in bar:
            opt.zero_grad(set_to_none=True)
            loss, logits = _episode_loss(model, sx, qx, qy, ep_spec, dist.device)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            accs.append(float((logits.argmax(1).cpu() == qy).float().mean()))
            n_img += len(sx) + len(qx)
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", acc=f"{np.mean(accs):.3f}", img_s=f"{n_img / (time.perf_counter() - t0):.1f}")
        sched.step()
        epoch_time = time.perf_counter() - t0
        seen_images += n_img * dist.world_size
        # every process recomputes BatchNorm statistics from the same (unsharded) episodes, so all of
        # them validate the same network and take the same early-stopping decision
        bn_eps.set_epoch(epoch)
        precise_bn(encoder, (torch.cat([sx, qx]).to(dist.device) for sx, qx, _y, _c in islice(DataLoader(bn_eps, batch_size=None), BN_EPISODES)))
        val = run_episodes(encoder, val_eps, len(classes))
        row = epoch_row(epoch, float(np.mean(losses)), float(np.mean(accs)), val["loss"], val["y"], val["pred"], len(classes),
                        opt.param_groups[0]["lr"], epoch_time, n_img * dist.world_size, val_acc=float(np.mean(val["accuracies"])))
        history.append(row)
        improved, best_loss, bad_epochs, line = close_epoch(row, best_loss, bad_epochs, "val episodes")
        log_lines.append(line)
        if dist.is_main:
            tqdm.write(line)
            extra = {"train_config": config_dict, "proto_config": proto_dict, "epoch": epoch, "history": history, "best_val_loss": best_loss}
            if improved:
                save_protonet(proto_path, encoder, None, contract.to_dict(), **extra)
            save_protonet(last_path, encoder, None, contract.to_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                          bad_epochs=bad_epochs, **extra)
            write_epoch_log(os.path.join(cfg.out, "epochs.csv"), history)
        if cfg.early_stop and bad_epochs >= cfg.early_stop:
            log_lines.append(f"early stop: validation episode loss did not improve for {cfg.early_stop} epochs")
            break
    summary = run_summary("protonet", cfg.arch, classes, history, time.perf_counter() - t_start, seen_images, dist.world_size,
                          (len(train_ds), len(val_ds), len(index.of_split("test"))), skipped, config_dict)
    summary["proto_config"] = proto_dict
    if dist.is_main:
        summary.update(_finish(cfg, proto, ep_spec, index, classes, spec, contract, train_ds, val_ds, proto_path, show, log_lines))
        write_json(os.path.join(cfg.out, "metrics.json"), summary)
        write_text(os.path.join(cfg.out, "train.log"), "\n".join(log_lines) + "\n")
        from edgecxr.train.plots import plot_curves

        plot_curves(history, os.path.join(cfg.out, "curves.png"),
                    title=f"{cfg.arch} protonet ({ep_spec.n_way}-way {ep_spec.k_shot}-shot) on {os.path.basename(index.root.rstrip('/'))}")
    dist.close()
    return summary


def _finish(cfg: TrainConfig, proto: ProtoConfig, ep_spec: EpisodeSpec, index, classes: list[str], spec: PreprocessSpec, contract,
            train_ds: CXRDataset, val_ds: CXRDataset, proto_path: str, show: bool, log_lines: list[str]) -> dict:
    """Best encoder -> training-set prototypes -> folded ``best.pt``; test episodes; fold check."""
    encoder, _none, payload = load_protonet(proto_path)
    train_ds.augment_spec = None  # prototypes come from the images as they are, not augmented
    emb, labels = embed_dataset(encoder, train_ds, progress=show, desc="prototypes")
    protos = class_prototypes(emb, labels, len(classes))
    folded = fold_into_classifier(encoder, protos, cfg.arch)
    extra = {k: payload[k] for k in ("train_config", "proto_config", "epoch", "history", "best_val_loss")}
    save_protonet(proto_path, encoder, protos, contract.to_dict(), prototype_images=len(labels), **extra)
    save_checkpoint(os.path.join(cfg.out, "best.pt"), folded, contract, **extra)

    # the folded classifier must give the distance classifier's probabilities (up to float rounding)
    v_emb, _ = embed_dataset(encoder, val_ds)
    with torch.no_grad():
        p_dist = torch.softmax(-squared_distances(v_emb, protos), 1)
        x = torch.stack([val_ds[i][0] for i in range(len(val_ds))]).contiguous(memory_format=torch.channels_last)
        p_fold = torch.softmax(folded(x), 1)
    fold_diff = float((p_dist - p_fold).abs().max())
    fold_agree = float((p_dist.argmax(1) == p_fold.argmax(1)).float().mean())
    log_lines.append(f"prototypes from {len(labels)} training images; folded classifier vs distances on val: "
                     f"max |prob diff| {fold_diff:.2e}, top-1 agreement {fold_agree:.4f}")

    out: dict = {"prototype_images": len(labels), "fold_check": {"max_abs_prob_diff": fold_diff, "top1_agreement": fold_agree}}
    test_samples = index.of_split("test")
    if test_samples:
        test_ds = CXRDataset(index.root, test_samples, classes, spec, None, cfg.seed, show, "loading test")
        try:
            test_eps = EpisodeDataset(test_ds, test_ds.labels, ep_spec, cfg.seed + TEST_SEED_OFFSET, "test split")
        except EdgecxrError as exc:
            log_lines.append(f"test episodes skipped: {exc}")
        else:
            res = run_episodes(encoder, test_eps, len(classes), progress=show, desc="test episodes")
            out["test_episodes"] = episode_summary(res["accuracies"], ep_spec, "test")
            te = out["test_episodes"]
            log_lines.append(f"test episodes: mean accuracy {te['mean_accuracy']:.4f} "
                             f"[{te['accuracy_ci95'][0]:.4f}, {te['accuracy_ci95'][1]:.4f}] over {te['episodes']} episodes")
            from tqdm import tqdm

            if show:
                tqdm.write(log_lines[-1])
    if proto.train_shots:
        out["train_files"] = list(train_ds.files)
    return out
