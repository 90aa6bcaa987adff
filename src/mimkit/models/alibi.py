"""2D-ALiBi (CROMA, Fuller et al., 2023): positions as attention biases, not as a table.

Each head adds `-slope * distance` to the attention score of a query patch and a key patch,
where distance is the Euclidean distance between their grid positions and the slopes are
ALiBi's geometric sequence (one per head). The bias depends only on relative position, so an
encoder trained on one grid runs on a larger one with nothing to interpolate. Between two
token sets (X-ALiBi, the fusion encoder's cross-attention) the same bias is taken between the
queries' positions and the keys' positions.
"""

from __future__ import annotations

import math

import torch

from mimkit.models.config import ModelConfig
from mimkit.models.vit import VisionTransformer


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes: 2^(-8/n), its powers, for n a power of two; otherwise those of
    the power of two below, then every other slope of the one above (Press et al.)."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return torch.tensor(power_of_two(heads))
    below = 2 ** math.floor(math.log2(heads))
    extra = power_of_two(2 * below)[0::2][: heads - below]
    return torch.tensor(power_of_two(below) + extra)


def grid_positions(grid_hw: tuple[int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, 2) float (row, column) of every patch of a grid, in row-major token order."""
    rows, cols = torch.meshgrid(
        torch.arange(grid_hw[0], device=device),
        torch.arange(grid_hw[1], device=device),
        indexing="ij",
    )
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1).float()


def alibi_bias(
    grid_hw: tuple[int, int],
    heads: int,
    ids_q: torch.Tensor | None = None,
    ids_k: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The attention bias between query patches `ids_q` (B, Nq) and key patches `ids_k` (B, Nk)
    of one grid: (B, heads, Nq, Nk); None for either means every patch (batch 1 when both are)."""
    pos = grid_positions(grid_hw, device)
    q = pos[None] if ids_q is None else pos[ids_q]
    k = pos[None] if ids_k is None else pos[ids_k]
    distance = torch.cdist(q, k)  # (B, Nq, Nk)
    slopes = alibi_slopes(heads).to(device)
    return -slopes[None, :, None, None] * distance[:, None]


class AlibiViT(VisionTransformer):
    """A ViT with 2D-ALiBi biases in every block and no position table (and no prefix token):
    it encodes a grid of any size. Parameter names are `VisionTransformer`'s."""

    def __init__(self, cfg: ModelConfig) -> None:
        if cfg.cls_token:
            raise ValueError("an ALiBi encoder has no cls token: set model.cls_token false")
        super().__init__(cfg)
        self.pos_embed = None  # positions enter only as attention biases

    def embed(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens, optionally only the `ids_keep` ones: (B, N or K, D); no table added."""
        if x.shape[1] != self.cfg.in_chans or x.ndim != 4:
            raise ValueError(
                f"expected a (B, {self.cfg.in_chans}, H, W) batch, got shape {tuple(x.shape)}"
            )
        tokens = self.patch_embed(x)
        if ids_keep is not None:
            tokens = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
        return tokens

    def grid_of(self, x: torch.Tensor) -> tuple[int, int]:
        """The patch grid of a batch at whatever size it has."""
        p = self.cfg.patch_size
        return x.shape[-2] // p, x.shape[-1] // p

    def attention_bias(
        self, x: torch.Tensor, ids_keep: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """2D-ALiBi distances between the `ids_keep` patches of `x`'s grid (all without)."""
        bias = alibi_bias(self.grid_of(x), self.cfg.num_heads, ids_keep, ids_keep, x.device)
        return bias.to(dtype)

    def forward_mask_tokens(self, *args, **kwargs):
        raise NotImplementedError("an ALiBi encoder encodes visible tokens only (no mask tokens)")
