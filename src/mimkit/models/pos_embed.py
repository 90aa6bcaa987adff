"""Fixed sine-cosine position embeddings, as in MAE (and HF ViTMAE), for any grid shape.

The layout follows the MAE reference exactly so that weights and outputs match theirs: the
first half of the channels encodes the column (w) coordinate, the second half the row (h)
coordinate, each as [sin | cos] over geometrically spaced frequencies. `sincos_grid` extends this
to any rank (the last axis first, so a 2-D grid gives exactly `sincos_2d`); `sincos_index` is
VideoMAE's 1-D table over the flat token index, with interleaved sin/cos channels.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Embed 1-D positions (any shape, flattened) into `dim` channels: [sin | cos]."""
    if dim % 2:
        raise ValueError(f"1-D sin-cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> torch.Tensor:
    """(grid_h*grid_w [+1], dim) float32 table in row-major patch order; a zero row for cls."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def sincos_grid(dim: int, grid: tuple[int, ...], cls_token: bool = False) -> torch.Tensor:
    """(prod(grid) [+1], dim) float32 table for a grid of any rank, tokens in row-major order.

    Channels are split between the axes, last axis (width) first, each an even share of
    [sin | cos]; for a 2-D grid this is bit-for-bit `sincos_2d`.
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    if len(grid) == 2:
        return sincos_2d(dim, *grid, cls_token=cls_token)
    coords = torch.meshgrid(*(torch.arange(g, dtype=torch.float64) for g in grid), indexing="ij")
    pairs, axes = dim // 2, len(grid)
    shares = [pairs // axes + (1 if i < pairs % axes else 0) for i in range(axes)]
    parts = [sincos_1d(2 * share, coords[axes - 1 - i]) for i, share in enumerate(shares)]
    emb = torch.cat(parts, dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def sincos_index(dim: int, num_tokens: int, cls_token: bool = False) -> torch.Tensor:
    """VideoMAE's table: angle pos / 10000^(2*(j//2)/dim), sin on even channels, cos on odd."""
    pos = torch.arange(num_tokens, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angles = pos / 10000 ** (2 * torch.div(j, 2, rounding_mode="floor") / dim)
    emb = torch.where(j.long() % 2 == 0, torch.sin(angles), torch.cos(angles))
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def position_table(kind: str, dim: int, grid: tuple[int, ...], cls_token: bool) -> torch.Tensor:
    """(1, [1+] N, dim) fixed table of the kind a model config names ('sincos' or 'sincos_index')."""
    if kind == "sincos_index":
        n = 1
        for g in grid:
            n *= g
        return sincos_index(dim, n, cls_token)[None]
    return sincos_grid(dim, tuple(grid), cls_token)[None]


def is_fixed_table(
    pos_embed: torch.Tensor, kind: str, grid: tuple[int, ...], num_prefix_tokens: int
) -> bool:
    """Whether the grid rows of a (1, prefix + N, D) table are the fixed `kind` table at `grid`.

    A mimkit model's table always is (it is a buffer, never trained); an imported one may have
    been learned (supervised timm weights), and then it is not.
    """
    grid_rows = pos_embed[:, num_prefix_tokens:]
    if grid_rows.shape[1] != math.prod(grid):
        return False
    fixed = position_table(kind, pos_embed.shape[-1], tuple(grid), cls_token=False)
    # compared at the table's own precision, so a half-precision copy still counts as fixed
    return torch.allclose(grid_rows.float(), fixed.to(pos_embed.dtype).float(), rtol=0, atol=1e-5)


def adapt_pos_embed(
    pos_embed: torch.Tensor,
    kind: str,
    old_grid: tuple[int, ...],
    new_grid: tuple[int, ...],
    num_prefix_tokens: int,
) -> torch.Tensor:
    """A (1, prefix + prod(old_grid), D) table made for `new_grid`; the prefix rows are kept.

    The fixed sin-cos table (`kind`, as the model config names it) is regenerated exactly at
    the new grid, since that is the table a model built at the new size has; only a learned
    table is interpolated (bicubic, 2-D grids, with a warning).
    """
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    if not is_fixed_table(pos_embed, kind, old_grid, num_prefix_tokens):
        if len(old_grid) != 2 or len(new_grid) != 2:
            raise ValueError(
                f"a learned position table can only be interpolated on 2-D grids, not from "
                f"{tuple(old_grid)} to {tuple(new_grid)}"
            )
        return resample_pos_embed(pos_embed, new_grid, old_grid, num_prefix_tokens)
    log.info("fixed %s position table regenerated for grid %s", kind, tuple(new_grid))
    grid = position_table(kind, pos_embed.shape[-1], tuple(new_grid), cls_token=False)
    return torch.cat([pos_embed[:, :num_prefix_tokens], grid.to(pos_embed.dtype)], dim=1)


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Bicubically resize a (1, prefix+H*W, D) table to a new grid; prefix rows are kept.

    For learned tables; a fixed sin-cos table is regenerated instead (`adapt_pos_embed`).
    """
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    log.warning("position embedding resampled from grid %s to %s", tuple(old_grid), tuple(new_grid))
    return torch.cat([prefix, grid.to(pos_embed.dtype)], dim=1)
