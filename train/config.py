"""``TrainConfig``: one training run's settings, shared by every training method.

``edgecxr train``'s flags map one to one onto these fields; the whole config is
stored in every checkpoint (``train_config``) and in ``metrics.json`` (``config``).
"""
from __future__ import annotations

from dataclasses import dataclass

from edgecxr.device.preprocess import PreprocessSpec


@dataclass
class TrainConfig:
    data: str | list[str]  # one dataset folder, or several: one per source (edgecxr.data.folders.list_sources)
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
    teacher: str | None = None  # checkpoint to distil from (edgecxr.train.teacher)
    distill_temperature: float = 4.0
    distill_alpha: float = 0.7
    teacher_logits: str = "cache"  # cache | live
    split: str = "80/10/10"
    split_csv: str | None = None
    equalize: str = "clahe"
    augment: bool = True
    classes: list[str] | None = None  # keep only these class folders (None: all)
    holdout: list[str] | None = None  # SOURCE or SOURCE/CLASS held out of train/val/test (split "holdout")
    balance: str = "none"  # none | class | source (edgecxr.train.sampling)
    site_augment: bool = False  # edgecxr.train.site_augment before equalisation
    site_augment_p: str | None = None  # "NAME=P,...": probabilities replacing SiteAugmentSpec's defaults
    workers: int = 0
    threads: int | None = None
    progress: bool = True

    @property
    def data_roots(self) -> list[str]:
        return [self.data] if isinstance(self.data, str) else list(self.data)

    def spec(self) -> PreprocessSpec:
        """The preprocessing a new run trains with (a resumed run keeps its checkpoint's)."""
        return PreprocessSpec(size=self.img_size, equalize=self.equalize)
