"""MR-MAE, mimic before reconstruct (Gao et al., 2023): an MAE whose visible tokens also learn
to say what a frozen teacher sees there.

1. As MAE: the encoder sees the visible 25% of the patches; a light decoder predicts the
   pixels of the hidden 75%, and the pixel loss covers those hidden patches only.
2. Mimic: a linear head on the encoder's visible tokens predicts the teacher's features at the
   same positions (the teacher, frozen, sees the whole image; its tokens are layer-normalised),
   MSE. The two losses cover disjoint token sets: high-level guidance where the encoder can
   see, low-level reconstruction where it cannot, so they do not pull on the same tokens.

The teacher is any mimkit checkpoint (its encoder is used; an imported one converts to a mimkit
checkpoint first) on the student's patch grid; it is not saved with the student, and
`method.teacher_dim` records its width so the student rebuilds alone. Where this differs from
the paper: one teacher, not CLIP and DINO together, and no attention-based selection of the
visible tokens ("focused mimicking"): the mask is the configured strategy's.
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
from mimkit.objectives.mae import mae_decoder
from mimkit.objectives.targets import masked_mse, pixel_target
from mimkit.patches import patchify


@dataclass
class MRMAESettings(MethodSettings):
    name = "mrmae"
    teacher: str | None = None  # checkpoint whose encoder is the frozen teacher
    teacher_dim: int | None = None  # its width, read from the teacher when it is loaded
    norm_pix_loss: bool = True
    mimic_weight: float = 1.0

    def check(self, model: ModelConfig) -> None:
        if not self.teacher:
            raise ConfigError("method.teacher: method 'mrmae' needs the checkpoint of a teacher")
        if self.mimic_weight < 0:
            raise ConfigError(f"method.mimic_weight must be >= 0, got {self.mimic_weight}")


class MimicReconstructMAE(nn.Module):
    reconstructs_pixels = False

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: MRMAESettings | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        super().__init__()
        settings = settings or MRMAESettings()
        settings, teacher_encoder = patch_feature_teacher(settings, cfg, teacher)
        self.cfg = cfg
        self.masking = masking or MaskingConfig()
        self.settings = settings
        self.encoder = VisionTransformer(cfg)
        self.decoder = mae_decoder(cfg, cfg.patch_dim)
        self.mimic_head = nn.Linear(cfg.embed_dim, settings.teacher_dim)
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
        latent = self.encoder(images, mask.ids_keep)
        pred = self.decoder(latent, mask.ids_restore)
        reconstruction = masked_mse(pred.float(), self.target(images).float(), mask.binary)
        mimic = self.mimic_head(latent[:, self.encoder.num_prefix_tokens :])
        mimic_loss = F.mse_loss(mimic.float(), self.mimic_target(images, mask))
        return MethodOutput(reconstruction + self.settings.mimic_weight * mimic_loss, pred, mask)

    def mimic_target(self, images: torch.Tensor, mask: Mask) -> torch.Tensor:
        """The teacher's layer-normalised tokens (B, K, teacher_dim) at the visible patches."""
        if self.teacher is None:
            raise teacher_missing(self.settings)
        full = self.teacher(images)[:, self.teacher.model.num_prefix_tokens :]
        visible = take_tokens(full, mask.ids_keep)
        return F.layer_norm(visible.float(), visible.shape[-1:])

    def target(self, images: torch.Tensor) -> torch.Tensor:
        patches = patchify(images, self.cfg.patch_shape)
        return pixel_target(patches, self.settings.norm_pix_loss, "patch", self.cfg.in_chans)

    def reconstruct(self, images: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
        raise ConfigError("MR-MAE's pictures are not offered: use an MAE run to look at them")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)
