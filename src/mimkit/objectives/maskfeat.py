"""MaskFeat (Wei et al., 2022): predict HOG features of the hidden patches.

Masking, encoder on visible tokens and the light decoder are MAE's; the target is each hidden
patch's histogram of oriented gradients instead of its pixels, which ignores absolute intensity
and fine texture noise. The loss is the MSE on hidden patches only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask, MaskingConfig
from mimkit.models.config import ModelConfig
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.base import MethodOutput, MethodSettings
from mimkit.objectives.mae import mae_decoder
from mimkit.objectives.targets import HOGTarget, masked_mse


@dataclass
class MaskFeatSettings(MethodSettings):
    name = "maskfeat"
    hog_bins: int = 9  # orientation bins of the HOG target

    def check(self, model: ModelConfig) -> None:
        if self.hog_bins < 2:
            raise ConfigError(f"method.hog_bins must be >= 2, got {self.hog_bins}")


class MaskFeat(nn.Module):
    reconstructs_pixels = False  # HOG features: there is no image to show

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: MaskFeatSettings | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.masking = masking or MaskingConfig()
        self.settings = settings or MaskFeatSettings()
        self.encoder = VisionTransformer(cfg)
        self.hog = HOGTarget(cfg.patch_size, cfg.in_chans, self.settings.hog_bins)
        self.decoder = mae_decoder(cfg, self.hog.dim)

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
        pred = self.decoder(self.encoder(images, mask.ids_keep), mask.ids_restore)
        loss = masked_mse(pred.float(), self.hog(images), mask.binary)
        return MethodOutput(loss, pred, mask)

    def reconstruct(self, images: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
        raise ConfigError("MaskFeat predicts HOG features, not pixels: there is no image to show")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)
