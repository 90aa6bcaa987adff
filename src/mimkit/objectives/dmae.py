"""DMAE, distilling from a masked autoencoder (Bai et al., 2023): a small MAE under extreme
masking learns from the intermediate features of a larger, frozen one.

1. Hide almost everything: 95% or 98% of the patches (10 or 4 visible at ViT-B/16, 224 px,
   counted as the paper counts; `masking.ratio` 0.948 or 0.979 with mimkit's count). Training
   is cheap because both encoders see only those few patches.
2. The student is an MAE: encoder on the visible patches, light decoder, pixel loss on the
   hidden patches.
3. The teacher, a larger MAE encoder pretrained and frozen, sees the same visible patches. The
   output of one intermediate student block (3/4 of the way up by default), through a linear
   projection to the teacher's width, is aligned to the output of one intermediate teacher
   block (3/4 of the way up by default): L1 distance between the l2-normalised features, on
   every token the two encoders share (cls and the visible patches).

The teacher is not saved with the student; `method.teacher_dim` and `method.teacher_block`
record what the student needs to rebuild alone. Where this differs from the authors' code:
one aligned pair of blocks (theirs allows several), the projection is their `fc-1layer`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask, MaskingConfig
from mimkit.models.config import ModelConfig
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.base import (
    MethodOutput,
    MethodSettings,
    check_teacher_fits,
    frozen,
    require_teacher_width,
    teacher_missing,
)
from mimkit.objectives.mae import mae_decoder
from mimkit.objectives.targets import masked_mse, pixel_target
from mimkit.patches import patchify


@dataclass
class DMAESettings(MethodSettings):
    name = "dmae"
    teacher: str | None = None  # checkpoint whose encoder is the frozen, larger teacher
    teacher_dim: int | None = None  # its width, read from the teacher when it is loaded
    teacher_block: int | None = None  # its aligned block (1-based); default 3/4 of its depth
    student_block: int | None = None  # the student's aligned block (1-based); default 3/4
    norm_pix_loss: bool = True
    distill_weight: float = 1.0

    def check(self, model: ModelConfig) -> None:
        if not self.teacher:
            raise ConfigError("method.teacher: method 'dmae' needs the checkpoint of a teacher")
        if self.student_block is not None and not 1 <= self.student_block <= model.depth:
            raise ConfigError(
                f"method.student_block must be in [1, {model.depth}], got {self.student_block}"
            )
        if self.distill_weight < 0:
            raise ConfigError(f"method.distill_weight must be >= 0, got {self.distill_weight}")


def three_quarters(depth: int) -> int:
    """The block 3/4 of the way up (9 of 12, 18 of 24: the paper's pairing), at least 1."""
    return max(1, round(depth * 3 / 4))


def settings_from_teacher(settings: DMAESettings, teacher: VisionTransformer) -> DMAESettings:
    depth = len(teacher.blocks)
    block = settings.teacher_block or three_quarters(depth)
    if not 1 <= block <= depth:
        raise ConfigError(f"method.teacher_block must be in [1, {depth}], got {block}")
    return replace(settings, teacher_dim=teacher.cfg.embed_dim, teacher_block=block)


class DistilledMAE(nn.Module):
    reconstructs_pixels = False

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: DMAESettings | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        super().__init__()
        settings = settings or DMAESettings()
        teacher_encoder = getattr(teacher, "encoder", teacher)
        if teacher_encoder is not None:
            check_teacher_fits(teacher_encoder.cfg, cfg)
            settings = settings_from_teacher(settings, teacher_encoder)
        require_teacher_width(settings)
        self.cfg = cfg
        self.masking = masking or MaskingConfig(ratio=0.95)
        self.settings = settings
        self.student_block = settings.student_block or three_quarters(cfg.depth)
        self.encoder = VisionTransformer(cfg)
        self.decoder = mae_decoder(cfg, cfg.patch_dim)
        self.projection = nn.Linear(cfg.embed_dim, settings.teacher_dim)
        self.teacher = frozen(teacher_encoder)

    def draw_mask(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> Mask:
        return self.masking.draw(batch, self.cfg.grid_shape, device, generator)

    def forward(
        self,
        images: torch.Tensor,
        mask: Mask | None = None,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        mask = mask if mask is not None else self.draw_mask(len(images), images.device, generator)
        latent, blocks = self.encoder(images, mask.ids_keep, return_hidden=True)
        pred = self.decoder(latent, mask.ids_restore)
        reconstruction = masked_mse(pred.float(), self.target(images).float(), mask.binary)
        student = F.normalize(self.projection(blocks[self.student_block]).float(), dim=-1)
        teacher = F.normalize(self.teacher_features(images, mask), dim=-1)
        distillation = F.l1_loss(student, teacher)
        return MethodOutput(
            reconstruction + self.settings.distill_weight * distillation, pred, mask
        )

    def teacher_features(self, images: torch.Tensor, mask: Mask) -> torch.Tensor:
        """The teacher's aligned block output (B, prefix + K, teacher_dim) on the visible patches."""
        if self.teacher is None:
            raise teacher_missing(self.settings)
        _, blocks = self.teacher(images, mask.ids_keep, return_hidden=True)
        return blocks[self.settings.teacher_block].float()

    def target(self, images: torch.Tensor) -> torch.Tensor:
        patches = patchify(images, self.cfg.patch_shape)
        return pixel_target(patches, self.settings.norm_pix_loss, "patch", self.cfg.in_chans)

    def reconstruct(self, images: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
        raise ConfigError("DMAE's pictures are not offered: use an MAE run to look at them")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)
