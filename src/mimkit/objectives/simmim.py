"""SimMIM (Xie et al., 2022): the encoder sees every patch, hidden ones replaced by a mask token.

1. Hide patches (SimMIM uses large mask patches: the `coarse` strategy with mask_patch > 1).
2. Unlike MAE, the encoder runs on the full sequence: hidden patches enter as a learned
   `mask_token` (before the position embedding is added), so the encoder knows where they are.
3. A linear head maps every token back to its patch's pixels.
4. The loss is the L1 distance on hidden patches only, in the normalised image space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimkit.masking import Mask, MaskingConfig
from mimkit.models.config import ModelConfig
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.base import MethodOutput, MethodSettings
from mimkit.objectives.targets import masked_l1
from mimkit.patches import patchify


@dataclass
class SimMIMSettings(MethodSettings):
    name = "simmim"


class SimMIM(nn.Module):
    reconstructs_pixels = False  # its predictions are raw pixels, but only on hidden patches

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: SimMIMSettings | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.masking = masking or MaskingConfig(strategy="coarse")
        self.settings = settings or SimMIMSettings()
        self.encoder = VisionTransformer(cfg)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(cfg.embed_dim, cfg.patch_dim)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

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
        tokens = self.encode_masked(images, mask.binary)
        pred = self.head(tokens[:, self.encoder.num_prefix_tokens :])
        target = patchify(images, self.cfg.patch_shape)
        return MethodOutput(masked_l1(pred.float(), target.float(), mask.binary), pred, mask)

    def encode_masked(self, images: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Encoder output for all tokens, hidden patches entering as the mask token."""
        return self.encoder.forward_mask_tokens(images, hidden, self.mask_token)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)
