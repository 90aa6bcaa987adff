"""Images, clips and volumes <-> flattened patches, in the MAE/HF layout.

Each patch vector is ordered (patch axes..., channel): (p, q, c) for images as MAE, and
(t, p, q, c) for tubelets as VideoMAE. Patches are numbered in row-major grid order.
"""

from __future__ import annotations

import math

import torch


def _patch_shape(patch_size: int | tuple[int, ...], spatial_dims: int) -> tuple[int, ...]:
    if isinstance(patch_size, int):
        return (patch_size,) * spatial_dims
    if len(patch_size) != spatial_dims:
        raise ValueError(f"patch {tuple(patch_size)} does not fit {spatial_dims}-D inputs")
    return tuple(int(p) for p in patch_size)


def patchify(images: torch.Tensor, patch_size: int | tuple[int, ...]) -> torch.Tensor:
    """(B, C, *S) -> (B, prod(S/P), prod(P)*C) for 2-D images (B, C, H, W) or 3-D (B, C, T, H, W)."""
    b, c, *size = images.shape
    ps = _patch_shape(patch_size, len(size))
    if any(s % p for s, p in zip(size, ps, strict=True)):
        shown = "x".join(map(str, size))
        raise ValueError(f"image {shown} is not divisible by patch size {'x'.join(map(str, ps))}")
    grid = [s // p for s, p in zip(size, ps, strict=True)]
    split = [b, c]
    for g, p in zip(grid, ps, strict=True):
        split += [g, p]
    x = images.reshape(split)
    k = len(size)
    # (b, c, g0, p0, g1, p1, ...) -> (b, g0, g1, ..., p0, p1, ..., c)
    order = [0] + [2 + 2 * i for i in range(k)] + [3 + 2 * i for i in range(k)] + [1]
    return x.permute(order).reshape(b, math.prod(grid), math.prod(ps) * c)


def unpatchify(
    patches: torch.Tensor,
    patch_size: int | tuple[int, ...],
    grid_hw: tuple[int, ...],
    channels: int,
) -> torch.Tensor:
    """Inverse of `patchify`: (B, prod(G), prod(P)*C) -> (B, C, *G*P); `grid_hw` is the grid shape."""
    b = patches.shape[0]
    grid = tuple(grid_hw)
    ps = _patch_shape(patch_size, len(grid))
    k = len(grid)
    x = patches.reshape(b, *grid, *ps, channels)
    # (b, g0.., p0.., c) -> (b, c, g0, p0, g1, p1, ...)
    order = [0, 1 + 2 * k]
    for i in range(k):
        order += [1 + i, 1 + k + i]
    return x.permute(order).reshape(b, channels, *(g * p for g, p in zip(grid, ps, strict=True)))
