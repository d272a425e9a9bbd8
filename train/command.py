"""``edgecxr train``: flags map one to one onto :class:`TrainConfig` (``edgecxr.train.config``)."""
from __future__ import annotations

import click

from edgecxr.models.registry import BACKBONES


@click.command("train")
@click.option("--data", required=True, multiple=True, type=click.Path(file_okay=False),
              help="Dataset folder, one subfolder per class (e.g. COVID/, Normal/). Repeat it to train on several sources "
                   "(each folder is one source, named after it, e.g. --data covid-radiography --data tbcxr); a source "
                   "beside others may hold one class, e.g. a clinic's own labelled Normal/ images.")
@click.option("--classes", help="Comma-separated class folders to keep, e.g. COVID,Normal,Viral_Pneumonia to take only the "
              "Normal images of a TB database given as a second --data.")
@click.option("--holdout", multiple=True, help="Hold SOURCE (or SOURCE/CLASS) out of train, val and test: its images form split "
              "'holdout', for a leave-one-source-out evaluation (edgecxr eval RUN/best.pt --split holdout). Repeatable.")
@click.option("--balance", default="none", show_default=True, type=click.Choice(["none", "class", "source"]),
              help="Draw training images balanced by class, or by class and by source within each class (a small second "
                   "source then weighs as much as the first). Measured in the README (Training for a new site).")
@click.option("--site-augment", is_flag=True, help="Randomise what tells one source from another (gamma, intensity window, "
              "histogram of another source, blur, noise, JPEG, cropped or framed borders, burnt-in markers), before "
              "equalisation. Measured in the README (Training for a new site).")
@click.option("--site-augment-p", metavar="NAME=P[,NAME=P]", help="With --site-augment: change a transform's probability, e.g. "
              "local_contrast=0.3 (random CLAHE or unsharp masking, off by default) or jpeg=0.6; names in train/site_augment.py.")
@click.option("--arch", default="mobilenet_v2", show_default=True, type=click.Choice(list(BACKBONES)), help="Backbone from the registry.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder: best.pt, last.pt, split.csv, metrics.json, curves.png.")
@click.option("--method", default="supervised", show_default=True, type=click.Choice(["supervised", "protonet"]), help="Plain fine-tuning, or a prototypical network trained on N-way K-shot episodes.")
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(1), help="Maximum epochs (early stopping may end sooner).")
@click.option("--img-size", default=224, show_default=True, type=click.IntRange(32), help="Square input size in pixels.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Learning rate.")
@click.option("--optimizer", default="adam", show_default=True, type=click.Choice(["adam", "sgd"]))
@click.option("--scheduler", default="step", show_default=True, type=click.Choice(["step", "cosine"]), help="StepLR (x --gamma every --step-size epochs) or cosine annealing.")
@click.option("--step-size", type=click.IntRange(1), help="StepLR period in epochs [default: 7 supervised, 10 protonet].")
@click.option("--gamma", type=float, help="StepLR factor [default: 0.1 supervised, 0.5 protonet].")
@click.option("--early-stop", default=5, show_default=True, type=click.IntRange(0), help="Stop after this many epochs without a lower validation loss (0: never).")
@click.option("--freeze-backbone", is_flag=True, help="Train the classifier head only.")
@click.option("--unfreeze-last", default=0, type=click.IntRange(0), help="With a frozen backbone, also train its last N layers.")
@click.option("--class-weights", is_flag=True, help="Weight the loss by inverse class frequency (imbalanced data).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for the split, initialisation and augmentation "
              "(augmentation and --balance draws are seeded by seed and epoch: continuing a run with --weights, give another "
              "seed, or its epochs replay the augmentations the first run saw).")
@click.option("--split", "split", default="80/10/10", show_default=True, help="train/val/test ratios; the original study used 96/2/2.")
@click.option("--split-csv", type=click.Path(dir_okay=False), help="Reuse an existing split.csv instead of making one.")
@click.option("--equalize", default="clahe", show_default=True, type=click.Choice(["clahe", "global", "none"]), help="Histogram equalisation step of the preprocessing.")
@click.option("--no-augment", is_flag=True, help="Turn off flips, rotations and brightness/contrast jitter.")
@click.option("--pretrained", is_flag=True, help="Start from ImageNet weights (downloads them; efficientnet_lite0 works offline).")
@click.option("--weights", type=click.Path(dir_okay=False), help="Start from a local weights file: an edgecxr checkpoint, a state dict, or (mobilenet_v2) an official TFLite MobileNetV2, whose ImageNet weights are dequantized: the offline stand-in for --pretrained.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--qat", is_flag=True, help="Quantization-aware fine-tuning: simulate convert --int8's rounding (per-channel int8 weights after batch-norm folding, 8-bit activations) so the INT8 model loses less. Start from a trained model with --weights; 2-3 epochs at --lr 1e-4 suffice. The checkpoint stays float.")
@click.option("--qat-target", default="portable", show_default=True, type=click.Choice(["portable", "host", "x86-vnni", "arm64"]),
              help="The convert --int8 --target to simulate: portable rounds weights to ONNX Runtime's u8 grid (u8 x u8), the others to symmetric s8.")
@click.option("--teacher", type=click.Path(dir_okay=False), help="Knowledge distillation: an edgecxr checkpoint with the data's classes "
              "whose soft outputs the student learns besides the labels (supervised only). The teacher sees each image through its own "
              "preprocessing (size, normalisation), whatever the student's --img-size.")
@click.option("--distill-temperature", default=4.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Softmax temperature T of the soft term (its loss is scaled by T^2). Measured in docs/results/training.md.")
@click.option("--distill-alpha", default=0.7, show_default=True, type=click.FloatRange(0, 1),
              help="Weight of the soft (teacher) term; 1 - alpha weights cross-entropy on the labels. Measured in docs/results/training.md.")
@click.option("--teacher-logits", default="cache", show_default=True, type=click.Choice(["cache", "live"]),
              help="cache: one teacher pass over the unaugmented training images before epoch 1, reused every epoch "
                   "(exact only with --no-augment); live: a teacher forward per batch on the same augmented image (exact, "
                   "slower). Measured on 2 cores (AMD EPYC): a MobileNetV2 teacher forward at 224 px costs 2.8x a SqueezeNet training "
                   "step at 128 px, so live makes every epoch ~3.8x slower; cache pays one such pass per run.")
@click.option("--threads", type=click.IntRange(1), help="Torch CPU threads (default: all cores).")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(0), help="DataLoader worker processes.")
@click.option("--n-way", default=3, show_default=True, type=click.IntRange(2), help="protonet: classes per episode.")
@click.option("--k-shot", default=5, show_default=True, type=click.IntRange(1), help="protonet: support images per class.")
@click.option("--q-query", default=5, show_default=True, type=click.IntRange(1), help="protonet: query images per class.")
@click.option("--episodes", default=20, show_default=True, type=click.IntRange(1), help="protonet: episodes per epoch and per evaluation split.")
@click.option("--train-shots", type=click.IntRange(1), help="protonet: use only this many training images per class (few-shot regime).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train_command(**kw) -> None:
    """Fine-tune a backbone on a folder of labelled chest X-rays.

    \b
    Examples:
      edgecxr train --data ../shared/data/covid-radiography --arch mobilenet_v2 --out runs/mnv2
      edgecxr train --data DATA --arch efficientnet_lite0 --pretrained --img-size 128 --epochs 10 --out runs/lite0
      edgecxr train --data DATA --split 96/2/2 --seed 1 --out runs/study
      edgecxr train --data covid-radiography --data tbcxr --classes COVID,Normal,Viral_Pneumonia --balance source --site-augment --out runs/robust
      edgecxr train --data covid-radiography --data tbcxr --classes COVID,Normal,Viral_Pneumonia --holdout tbcxr --out runs/loso_tbcxr
      edgecxr train --data DATA --method protonet --n-way 3 --k-shot 5 --out runs/proto
      edgecxr train --data DATA --weights runs/mnv2/best.pt --split-csv runs/mnv2/split.csv --qat --epochs 2 --lr 1e-4 --out runs/mnv2_qat
      edgecxr train --data DATA --arch squeezenet1_1 --teacher runs/mnv2/best.pt --split-csv runs/mnv2/split.csv --out runs/squeeze_kd
      torchrun --nproc_per_node 2 -m edgecxr train --data DATA --out runs/ddp

    The split is written to OUT/split.csv and reused by eval, convert and bench.
    """
    if kw["pretrained"] and kw["weights"]:
        raise click.UsageError("--pretrained and --weights are exclusive: pick one starting point")
    method = kw.pop("method")
    proto = {k: kw.pop(k) for k in ("n_way", "k_shot", "q_query", "episodes", "train_shots")}
    kw["augment"] = not kw.pop("no_augment")
    kw["progress"] = not kw.pop("quiet")
    kw["data"] = kw["data"][0] if len(kw["data"]) == 1 else list(kw["data"])
    kw["classes"] = [c.strip() for c in kw["classes"].split(",") if c.strip()] if kw["classes"] else None
    kw["holdout"] = list(kw["holdout"]) or None
    if kw["site_augment_p"]:
        from edgecxr.errors import EdgecxrError
        from edgecxr.train.site_augment import SiteAugmentSpec

        if not kw["site_augment"]:
            raise EdgecxrError("--site-augment-p changes --site-augment's probabilities: add --site-augment")
        SiteAugmentSpec().with_probabilities(kw["site_augment_p"])  # a typo is refused before any image is read
    from edgecxr.train.config import TrainConfig

    cfg = TrainConfig(**kw)
    if method == "protonet" and kw["teacher"]:
        raise click.UsageError("--teacher distils into a supervised classifier; the protonet trains on episodes without one")
    if method == "protonet" and kw["balance"] != "none":
        raise click.UsageError("--balance draws images for a supervised classifier; protonet episodes are class-balanced already")
    if method == "protonet" and kw["qat"]:
        raise click.UsageError("--qat fine-tunes a supervised classifier; train the protonet without it")
    if kw["qat"] and not (kw["weights"] or kw["resume"]):
        raise click.UsageError("--qat fine-tunes a trained model: pass its checkpoint with --weights (or --resume a QAT run)")
    if method == "protonet":
        from edgecxr.train.protonet import ProtoConfig, train_protonet

        summary = train_protonet(cfg, ProtoConfig(**proto))
    else:
        from edgecxr.train.supervised import train

        summary = train(cfg)
    click.echo(f"done: {summary['epochs_run']} epochs in {summary['train_seconds']:.0f} s, best epoch {summary['best_epoch']} "
               f"(val loss {summary['best_val_loss']:.4f}, val macro-F1 {summary['best_val_macro_f1']:.4f}); "
               f"{len(summary['skipped_files'])} unreadable files skipped; wrote {cfg.out}/best.pt")
