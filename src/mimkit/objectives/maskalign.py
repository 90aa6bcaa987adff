"""Teacher-feature targets, MaskAlign-style (Xue et al., 2023): align what the student sees
with what a frozen teacher sees.

1. The student encoder gets only the visible patches, as in MAE; there is no decoder.
2. The teacher, a frozen pretrained encoder, gets the whole image.
3. A linear adapter maps the student's visible tokens to the teacher's width; the loss is the
   MSE to the teacher's (layer-normalised) tokens at the same positions.
The teacher never trains and is not saved with the student; `method.teacher_dim` records its
width so a student checkpoint rebuilds without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask, MaskingConfig, take_tokens
from mimkit.models.config import ModelConfig
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.base import (
    MethodOutput,
    MethodSettings,
    frozen,
    patch_feature_teacher,
    teacher_missing,
)


@dataclass
class MaskAlignSettings(MethodSettings):
    name = "maskalign"
    teacher: str | None = None  # checkpoint of the frozen teacher encoder
    teacher_dim: int | None = None  # its width, read from the teacher when it is loaded

    def check(self, model: ModelConfig) -> None:
        if not self.teacher:
            raise ConfigError(
                "method.teacher: method 'maskalign' needs the checkpoint of a teacher"
            )


class MaskAlign(nn.Module):
    reconstructs_pixels = False

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: MaskAlignSettings | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        super().__init__()
        settings = settings or MaskAlignSettings()
        settings, teacher_encoder = patch_feature_teacher(settings, cfg, teacher)
        self.cfg = cfg
        self.masking = masking or MaskingConfig()
        self.settings = settings
        self.encoder = VisionTransformer(cfg)
        self.adapter = nn.Linear(cfg.embed_dim, settings.teacher_dim)
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
        prefix = self.encoder.num_prefix_tokens
        student = self.adapter(self.encoder(images, mask.ids_keep)[:, prefix:])
        loss = F.mse_loss(student.float(), self.target(images, mask))
        return MethodOutput(loss, student, mask)

    def target(self, images: torch.Tensor, mask: Mask) -> torch.Tensor:
        """The teacher's layer-normalised tokens at the student's visible positions."""
        if self.teacher is None:
            raise teacher_missing(self.settings)
        full = self.teacher(images)
        full = full[:, self.teacher.model.num_prefix_tokens :]
        visible = take_tokens(full, mask.ids_keep)
        return F.layer_norm(visible.float(), visible.shape[-1:])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)
