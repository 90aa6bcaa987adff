"""Teacher-feature targets, MaskAlign-style (Xue et al., 2023): align what the student sees
with what a frozen teacher sees.

1. The student encoder gets only the visible patches, as in MAE; there is no decoder.
2. The teacher, a frozen pretrained encoder, gets the whole image.
3. A linear adapter maps the student's visible tokens to the teacher's width; the loss is the
   MSE to the teacher's (layer-normalised) tokens at the same positions.
The teacher never trains: its parameters are frozen and it always runs in eval mode, without
gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.mask_shapes import ConfigMasking
from mimkit.masking import Mask
from mimkit.models.registry import ModelConfig
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.mae import MAEOutput


class MaskAlign(ConfigMasking, nn.Module):
    def __init__(
        self, cfg: ModelConfig, teacher: VisionTransformer, masking: str = "random"
    ) -> None:
        super().__init__()
        if tuple(teacher.cfg.grid_hw) != tuple(cfg.grid_hw):
            raise ValueError(
                f"teacher grid {teacher.cfg.grid_hw} differs from the student's {cfg.grid_hw}"
            )
        self.cfg = cfg
        self.encoder = VisionTransformer(cfg)
        self.adapter = nn.Linear(cfg.embed_dim, teacher.cfg.embed_dim)
        self.teacher = teacher.eval()
        self.teacher.requires_grad_(False)

    def train(self, mode: bool = True) -> MaskAlign:
        super().train(mode)
        self.teacher.eval()  # frozen: no drop-path, no statistics updates, ever
        return self

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None, mask: Mask | None = None) -> MAEOutput:  # fmt: skip
        mask = mask if mask is not None else self.make_mask(images, generator, noise)
        student = self.adapter(self.encoder(images, mask.ids_keep)[:, 1:])
        with torch.no_grad():
            full = self.teacher(images)[:, 1:]
            target = torch.gather(full, 1, mask.ids_keep[..., None].expand(-1, -1, full.shape[-1]))
            target = F.layer_norm(target.float(), target.shape[-1:])
        loss = F.mse_loss(student.float(), target)
        return MAEOutput(loss=loss, pred=student, mask=mask)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)
