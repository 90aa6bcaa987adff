"""MaskFeat (Wei et al., 2022) on the MAE engine: predict HOG features of the hidden patches.

Everything is MAE (masking, encoder on visible tokens, light decoder, loss on hidden patches
only) except the target: each hidden patch's histogram of oriented gradients instead of its
pixels, which ignores absolute intensity and fine texture noise.
"""

from __future__ import annotations

import torch
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask
from mimkit.models.registry import ModelConfig
from mimkit.objectives.mae import MaskedAutoencoder
from mimkit.objectives.targets import HOGTarget


class MaskFeat(MaskedAutoencoder):
    def __init__(self, cfg: ModelConfig, bins: int = 9, cell: int | None = None) -> None:
        super().__init__(cfg)
        self.hog = HOGTarget(cfg.patch_size, cfg.in_chans, bins, cell)
        self.decoder.pred = nn.Linear(cfg.decoder_embed_dim, self.hog.dim)

    def target(self, images: torch.Tensor) -> torch.Tensor:
        return self.hog(images)

    def reconstruct(self, images: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
        raise ConfigError("MaskFeat predicts HOG features, not pixels: there is no image to show")
