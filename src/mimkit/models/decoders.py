"""Decoders that turn encoder tokens back into per-patch predictions."""

from __future__ import annotations

import torch
from torch import nn

from mimkit.models.pos_embed import position_table
from mimkit.models.vit import Block, init_vit_weights


class MAEDecoder(nn.Module):
    """MAE's lightweight decoder: visible latents + mask tokens, unshuffled, through a small ViT.

    Input is the encoder output for [prefix..., visible...] (`cls_token`: whether the encoder
    has a cls token in front); output is one prediction per patch, in patch order, the prefix
    dropped. `grid_hw` is the patch grid of any rank; `cls_token=False` and
    `pos_embed='sincos_index'` give VideoMAE's decoder.
    """

    def __init__(
        self,
        encoder_dim: int,
        grid_hw: tuple[int, ...],
        out_dim: int,
        dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        eps: float = 1e-6,
        cls_token: bool = True,
        pos_embed: str = "sincos",
        head: nn.Module | None = None,
        final_norm: bool = True,
    ) -> None:
        """`head` replaces the linear prediction layer (G2SD: an MLP to teacher features) and
        `final_norm=False` drops the norm before it (G2SD reads pre-norm decoder tokens)."""
        super().__init__()
        self.num_prefix_tokens = 1 if cls_token else 0
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", position_table(pos_embed, dim, grid_hw, cls_token))
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias, eps) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=eps) if final_norm else nn.Identity()
        self.pred = nn.Linear(dim, out_dim) if head is None else head
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_vit_weights)

    def no_weight_decay(self) -> set[str]:
        """Parameters weight decay must leave alone beyond biases and norms: the mask token."""
        return {"mask_token"}

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        return self.pred(self.norm(self.hidden(latent, ids_restore)))[:, self.num_prefix_tokens :]

    def hidden(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, blocks: int | None = None
    ) -> torch.Tensor:
        """The decoder's tokens after its first `blocks` blocks (None: all), before its norm:
        (B, prefix + N, dim).

        G2SD distils these: they are the decoder's own picture of every patch, hidden or not.
        """
        x = self.embed(latent)
        b, n = ids_restore.shape
        k = self.num_prefix_tokens
        visible = x[:, k:]
        masks = self.mask_token.expand(b, n - visible.shape[1], -1)
        tokens = torch.cat([visible, masks], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :k], tokens], dim=1) + self.pos_embed
        for block in self.blocks[:blocks]:
            x = block(x)
        return x

    def forward_subset(
        self, latent: torch.Tensor, ids_keep: torch.Tensor, ids_pred: torch.Tensor
    ) -> torch.Tensor:
        """Predict only the patches `ids_pred` (B, M): VideoMAE's decoder, and V2's decoder masking.

        The decoder sees the visible tokens and one mask token per predicted position (never
        the whole grid), each with its position embedding; the output is (B, M, out_dim).
        """
        x = self.embed(latent)
        k = self.num_prefix_tokens
        grid_pos = self.pos_embed[:, k:].expand(x.shape[0], -1, -1)

        def pos(ids: torch.Tensor) -> torch.Tensor:
            return torch.gather(grid_pos, 1, ids[..., None].expand(-1, -1, x.shape[-1]))

        visible = x[:, k:] + pos(ids_keep)
        queries = self.mask_token + pos(ids_pred)
        parts = [visible, queries]
        if k:
            parts.insert(0, x[:, :k] + self.pos_embed[:, :k])
        h = torch.cat(parts, dim=1)
        for block in self.blocks:
            h = block(h)
        return self.pred(self.norm(h[:, -ids_pred.shape[1] :]))
