"""MaskFeat (Wei et al., 2022): predict HOG features of the hidden patches.

Masking, encoder on visible tokens and the light decoder are MAE's; the target is each hidden
patch's histograms of oriented gradients instead of its pixels, which ignores absolute intensity
and fine texture noise: Sobel gradients, a Gaussian window per patch, 9 unsigned orientation
bins, cells of `method.hog_cell` pixels each L2-normalised, the patch's cells side by side
(`mimkit.objectives.hog`, which says how the reference's 8-pixel cells map to our patch sizes).
The loss is the MSE on hidden patches only.
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
from mimkit.objectives.hog import PatchHOG, default_cell
from mimkit.objectives.mae import mae_decoder
from mimkit.objectives.targets import masked_mse


@dataclass
class MaskFeatSettings(MethodSettings):
    name = "maskfeat"
    hog_bins: int = 9  # orientation bins of the HOG target
    hog_cell: int | None = None  # pixels; None: the largest divisor of the patch size <= 8

    def check(self, model: ModelConfig) -> None:
        if self.hog_bins < 2:
            raise ConfigError(f"method.hog_bins must be >= 2, got {self.hog_bins}")
        if len(model.input_size) != 2:
            raise ConfigError(
                f"model.img_size {model.img_size}: method 'maskfeat' computes HOG of 2-D images; "
                "clips and volumes are not offered"
            )
        cell = default_cell(model.patch_size) if self.hog_cell is None else self.hog_cell
        if cell < 1 or model.patch_size % cell:
            raise ConfigError(
                f"method.hog_cell {cell} must divide model.patch_size {model.patch_size}"
            )


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
        s = self.settings
        self.hog = PatchHOG(cfg.patch_size, cfg.in_chans, s.hog_bins, s.hog_cell)
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
