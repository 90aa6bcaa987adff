"""Reconstruction targets other than pixels: histograms of oriented gradients (MaskFeat)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class HOGTarget(nn.Module):
    """Per-patch HOG, as MaskFeat predicts it: per channel, `bins` unsigned orientations,
    cells of `cell` pixels, each patch's histogram L2-normalised.

    Gradients are central differences ([-1, 0, 1]); each pixel votes its gradient magnitude
    into the bin of its orientation in [0, pi). Output: (B, N, C * cells_per_patch * bins).
    """

    def __init__(
        self, patch_size: int, channels: int, bins: int = 9, cell: int | None = None
    ) -> None:
        super().__init__()
        cell = cell or patch_size
        if patch_size % cell:
            raise ValueError(f"HOG cell {cell} must divide the patch size {patch_size}")
        self.patch_size, self.channels, self.bins, self.cell = patch_size, channels, bins, cell
        kernel = torch.tensor([-1.0, 0.0, 1.0])
        self.register_buffer(
            "dx", kernel.view(1, 1, 1, 3).repeat(channels, 1, 1, 1), persistent=False
        )
        self.register_buffer(
            "dy", kernel.view(1, 1, 3, 1).repeat(channels, 1, 1, 1), persistent=False
        )

    @property
    def dim(self) -> int:
        return self.channels * (self.patch_size // self.cell) ** 2 * self.bins

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        c = self.channels
        gx = F.conv2d(F.pad(x, (1, 1, 0, 0), mode="replicate"), self.dx, groups=c)
        gy = F.conv2d(F.pad(x, (0, 0, 1, 1), mode="replicate"), self.dy, groups=c)
        magnitude = torch.sqrt(gx**2 + gy**2)
        angle = torch.atan2(gy, gx) % math.pi  # unsigned orientation
        index = (angle / math.pi * self.bins).long().clamp(max=self.bins - 1)
        votes = torch.zeros(*x.shape[:2], self.bins, *x.shape[2:], device=x.device)
        votes.scatter_(2, index[:, :, None], magnitude[:, :, None])  # (B, C, bins, H, W)
        b, _, _, h, w = votes.shape
        cells = F.avg_pool2d(votes.reshape(b, c * self.bins, h, w), self.cell) * self.cell**2
        gh, gw = h // self.patch_size, w // self.patch_size
        k = self.patch_size // self.cell
        cells = cells.reshape(b, c, self.bins, gh, k, gw, k)
        per_patch = cells.permute(0, 3, 5, 1, 4, 6, 2).reshape(b, gh * gw, self.dim)
        return F.normalize(per_patch, dim=-1)
