"""Decoders that turn encoder tokens back into per-patch predictions."""

from __future__ import annotations

import torch
from torch import nn

from mimkit.models.pos_embed import sincos_2d
from mimkit.models.vit import Block, init_vit_weights


class MAEDecoder(nn.Module):
    """MAE's lightweight decoder: visible latents + mask tokens, unshuffled, through a small ViT.

    Input is the encoder output for [cls, visible...]; output is one prediction per patch, in
    patch order, with the cls position dropped.
    """

    def __init__(
        self,
        encoder_dim: int,
        grid_hw: tuple[int, int],
        out_dim: int,
        dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_2d(dim, *grid_hw, cls_token=True)[None])
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias, eps) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pred = nn.Linear(dim, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_vit_weights)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(latent)
        b, n = ids_restore.shape
        visible = x[:, 1:]
        masks = self.mask_token.expand(b, n - visible.shape[1], -1)
        tokens = torch.cat([visible, masks], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]
