"""SimMIM (Xie et al., 2022): the encoder sees every patch, hidden ones replaced by a mask token.

1. Hide patches (SimMIM uses large mask patches: the `coarse` strategy with mask_patch > 1).
2. Unlike MAE, the encoder runs on the full sequence: hidden patches enter as a learned
   `mask_token` (before the position embedding is added), so the encoder knows where they are.
3. A linear head maps every token back to its patch's pixels.
4. The loss is the L1 distance on hidden patches only, in the normalised image space.
"""

from __future__ import annotations

import torch
from torch import nn

from mimkit.mask_shapes import ConfigMasking
from mimkit.masking import Mask
from mimkit.models.registry import ModelConfig
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.mae import MAEOutput
from mimkit.patches import patchify


def masked_l1(pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the pixels of hidden patches."""
    per_patch = (pred - target).abs().mean(dim=-1)
    return (per_patch * hidden).sum() / hidden.sum()


class SimMIM(ConfigMasking, nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg  # cfg.masking 'coarse' with cfg.mask_patch > 1 is SimMIM's own choice
        self.encoder = VisionTransformer(cfg)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(cfg.embed_dim, cfg.patch_size**2 * cfg.in_chans)

    def encode_masked(self, images: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Encoder output for all tokens, hidden patches entering as the mask token."""
        enc = self.encoder
        tokens = enc.patch_embed(images)
        w = hidden[..., None].to(tokens.dtype)
        tokens = tokens * (1 - w) + self.mask_token.to(tokens.dtype) * w
        tokens = tokens + enc.pos_embed[:, 1:]
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        h = torch.cat([cls, tokens], dim=1)
        for block in enc.blocks:
            h = block(h)
        return enc.norm(h)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None, mask: Mask | None = None) -> MAEOutput:  # fmt: skip
        mask = mask if mask is not None else self.make_mask(images, generator, noise)
        hidden = mask.binary
        pred = self.head(self.encode_masked(images, hidden)[:, 1:])
        target = patchify(images, self.cfg.patch_size)
        loss = masked_l1(pred.float(), target.float(), hidden)
        return MAEOutput(loss=loss, pred=pred, mask=mask)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)
