"""CrossMAE's decoder: hidden-patch queries cross-attend to the encoder's visible tokens.

There is no self-attention among the queries, so each hidden patch is predicted independently
of the others, and only the patches one chooses to reconstruct need to be queried. Each decoder
block can read a free learned linear mix of the encoder's block outputs (normalised per decoder
block) instead of only the last.
"""

from __future__ import annotations

import torch
from torch import nn

from mimkit.models.pos_embed import sincos_2d
from mimkit.models.vit import Mlp, attention, init_vit_weights


class CrossAttentionBlock(nn.Module):
    """x + cross_attn(norm_q(x), norm_kv(memory)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim, eps=eps)
        self.norm_kv = nn.LayerNorm(dim, eps=eps)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        b, m, d = x.shape
        n = memory.shape[1]
        heads, hd = self.num_heads, d // self.num_heads
        q = self.q(self.norm_q(x)).view(b, m, heads, hd).transpose(1, 2)
        k, v = self.kv(self.norm_kv(memory)).view(b, n, 2, heads, hd).unbind(2)
        out = attention(q, k.transpose(1, 2), v.transpose(1, 2))
        x = x + self.proj(out.transpose(1, 2).reshape(b, m, d))
        return x + self.mlp(self.norm2(x))


class CrossMAEDecoder(nn.Module):
    # The table keeps a zero cls row in front, as MAE's decoder table: the queries are hidden
    # patches only, so it is never read, but checkpoints keep the table's shape.
    table_prefix_rows = 1

    def __init__(
        self,
        encoder_dim: int,
        encoder_depth: int,
        grid_hw: tuple[int, int],
        out_dim: int,
        dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        eps: float = 1e-6,
        mix_layers: bool = True,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_2d(dim, *grid_hw, cls_token=True)[None])
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(dim, num_heads, mlp_ratio, eps) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pred = nn.Linear(dim, out_dim)
        # a free linear mix (no softmax, as the reference's 1x1 convolution) of the encoder's
        # block outputs per decoder block, each mixed memory with its own LayerNorm
        self.layer_mix = None
        self.mix_norms = None
        if mix_layers:
            self.layer_mix = nn.Parameter(torch.full((depth, encoder_depth), 1.0 / encoder_depth))
            self.mix_norms = nn.ModuleList(nn.LayerNorm(dim, eps=eps) for _ in range(depth))
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_vit_weights)

    def no_weight_decay(self) -> set[str]:
        """Parameters weight decay must leave alone beyond biases and norms: the mask token."""
        return {"mask_token"}

    def forward(
        self, encoder_layers: list[torch.Tensor], ids_predict: torch.Tensor
    ) -> torch.Tensor:
        """`encoder_layers`: the encoder's block outputs (last one normalised), each
        (B, prefix + K, D): the queries attend to the prefix tokens too.

        Returns predictions (B, M, out_dim) for the patches `ids_predict` (B, M).
        """
        pos = self.pos_embed[:, self.table_prefix_rows :].expand(ids_predict.shape[0], -1, -1)
        pos = torch.gather(pos, 1, ids_predict[..., None].expand(-1, -1, pos.shape[-1]))
        x = self.mask_token + pos
        if self.layer_mix is None:
            memories = [self.embed(encoder_layers[-1])] * len(self.blocks)
        else:
            stacked = torch.stack(encoder_layers)  # (L, B, prefix + K, D)
            mixed = torch.einsum("dl,lbnc->dbnc", self.layer_mix.to(stacked.dtype), stacked)
            memories = [
                norm(memory)
                for norm, memory in zip(self.mix_norms, self.embed(mixed).unbind(0), strict=True)
            ]
        for block, memory in zip(self.blocks, memories, strict=True):
            x = block(x, memory)
        return self.pred(self.norm(x))
