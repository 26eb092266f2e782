"""The options of ``train-lineart`` (see :mod:`tasks.artline`), apart from the training
itself: the command line and the render flow read them without importing torch."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The style families of the randomised pairs (tasks.linepairs.FAMILIES), and synth's own
# portraits: named here so that the command line knows them without drawing anything.
FAMILY_NAMES = ("synth", "cel", "soft", "tone", "paint")
Family = Literal["synth", "cel", "soft", "tone", "paint"]


class LineartTrainOptions(BaseModel):
    """Hyper-parameters of ``train-lineart``; the defaults train on a CPU laptop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        "artline-unet-small", description="registered line-art network", json_schema_extra={"registry": "lineart"}
    )
    size: int = Field(256, ge=32, description="final training side (multiple of 16)")
    sizes: tuple[int, ...] = Field((), description="progressive sides; default size/4, size/2, size")
    epochs: tuple[int, ...] = Field((4, 4, 9), description="epochs at each of sizes (progressive resizing), e.g. 4,4,9")
    pairs: str | None = Field(None, description="folder of pairs in synth's layout; default: drawn")
    count: int = Field(640, ge=2, description="pairs to draw when no folder is given")
    families: tuple[Family, ...] = Field(
        (), description="style families to train on when pairs are drawn; default every family but the held-out one"
    )
    holdout: Family = Field(
        "cel", description="style family never trained on: the held-out F1 is measured on it (against XDoG and Canny)"
    )
    val_count: int = Field(32, ge=1, description="held-out pairs scored at every epoch")
    batch_size: int = Field(8, ge=1, description="pairs per step")
    lr: float = Field(2e-3, gt=0, description="peak learning rate (one-cycle, AdamW)")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    feature_weight: float | None = Field(
        None, ge=0, description="scale of the VGG16 feature + Gram terms; default 1 with ImageNet weights, else 0"
    )
    ink_weight: float = Field(3.0, ge=1, description="weight of ink pixels in the pixel L1 (1: plain L1)")
    dice_weight: float = Field(0.0, ge=0, description="weight of a soft Dice term on ink (overlap, as F1 counts it)")
    vgg_weights: str | None = Field(None, description="local file with ImageNet VGG16 weights")
    finetune: bool = Field(
        False,
        description="after the drawn pre-training, fine-tune on the workspace's annotated images: their region "
        "boundaries are line truth where XDoG or Canny sees an edge, the two methods' agreement a weak signal "
        "elsewhere; drawn pairs are replayed beside them",
    )
    finetune_epochs: int = Field(6, ge=1, description="fine-tuning epochs")
    finetune_size: int | None = Field(
        None, ge=32, description="side of the fine-tuning (multiple of 16); default the annotated images' own"
    )
    finetune_lr: float = Field(2e-3, gt=0, description="peak learning rate of the fine-tuning (one-cycle, AdamW)")
    replay: float = Field(2.0, ge=0, description="drawn pairs replayed per annotated image in a fine-tuning epoch")
    weak_weight: float = Field(
        1.0, ge=0, description="weight of XDoG's and Canny's agreement away from the annotated boundaries"
    )
    band: float = Field(3.0, gt=0, description="pixels either side of a boundary where only the boundary is truth")
    seed: int = Field(0, description="seed of the initial weights, the drawn pairs and the shuffle")
    device: str = "auto"

    @model_validator(mode="after")
    def _check(self) -> LineartTrainOptions:
        sizes = self.stage_sizes()
        if any(s % 16 for s in sizes):
            raise ValueError(f"every training side must be a multiple of 16, not {list(sizes)}")
        if len(self.epochs) != len(sizes):
            raise ValueError(f"epochs {list(self.epochs)} must give one count per size {list(sizes)}")
        if self.finetune_size is not None and self.finetune_size % 16:
            raise ValueError(f"the fine-tuning side must be a multiple of 16, not {self.finetune_size}")
        if self.holdout in self.families:
            raise ValueError(f"the held-out family {self.holdout!r} cannot also be a training family")
        return self

    def train_families(self) -> tuple[str, ...]:
        """The families drawn for training: ``families``, or every family but ``holdout``."""
        return self.families or tuple(f for f in FAMILY_NAMES if f != self.holdout)

    def feature_scale(self) -> float:
        """The feature-loss weight in effect (see the module docstring for the fallback)."""
        if self.feature_weight is not None:
            return self.feature_weight
        return 1.0 if self.vgg_weights else 0.0

    def stage_sizes(self) -> tuple[int, ...]:
        if self.sizes:
            return self.sizes
        ladder = tuple(s for s in (self.size // 4, self.size // 2, self.size) if s >= 32) or (self.size,)
        return ladder[-len(self.epochs) :] if self.epochs else ladder

    def run_key(self, pairs_digest: str = "") -> str:
        """The pre-training run's key: every option that shapes it (not the fine-tuning's) and,
        for pairs read from a folder, what the folder held (``pairs_digest``)."""
        fields = self.model_dump(exclude={"device", *FINETUNE_FIELDS})
        fields["sizes"] = list(self.stage_sizes())
        if pairs_digest:
            fields["pairs_digest"] = pairs_digest
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    def finetune_key(self, data_digest: str, base_key: str) -> str:
        """The fine-tuning run's key: the pre-training's (``base_key``: :meth:`run_key` with its
        pairs' digest), its own options and the annotations it reads."""
        fields = {k: v for k, v in self.model_dump().items() if k in FINETUNE_FIELDS}
        blob = json.dumps({"base": base_key, "data": data_digest, **fields}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


# Options of the fine-tuning stage only: the pre-training's run key leaves them out, so that
# fine-tuning (again, or with other settings) starts from the same pre-trained weights.
FINETUNE_FIELDS = frozenset(
    {"finetune", "finetune_epochs", "finetune_size", "finetune_lr", "replay", "weak_weight", "band"}
)
