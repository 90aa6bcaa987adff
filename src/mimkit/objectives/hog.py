"""Histograms of oriented gradients per patch, MaskFeat's target (Wei et al., 2022), as the
authors' code computes them (SlowFast `HOGLayerC`; mmpretrain's `HOGGenerator` for images).

1. Gradients per channel by Sobel filters on the reflect-padded image.
2. Each pixel's gradient magnitude, weighted by a Gaussian window the size of a patch tiled
   over the image (centred on every patch; sigma = half the patch side, rounded down, as
   mmpretrain's window of 16 with sigma 8 at 16-pixel patches), votes into one of `bins`
   unsigned orientation bins. The orientation is SlowFast's `atan2(gx, gy)`: measured from
   the vertical axis, so bin `bins // 2` (of 9) is centred on horizontal gradients (vertical
   edges) and bin 0 on vertical ones, and no bin edge falls on an axis.
3. Votes are summed over square cells of `cell` pixels and each cell's histogram (one per
   channel) is L2-normalised.
4. A patch's target is the histograms of the cells inside it: (C, bins, cells down, cells
   across) flattened, the reference's order.

Cell size at mimkit's patch sizes: the reference uses 8-pixel cells (2x2 cells in a 16-pixel
patch). A cell must tile the patch, so by default the cell is the largest divisor of the patch
size not above 8 pixels: 8 at 16-pixel patches (the reference), 7 at the 7-pixel patches of the
Fashion-MNIST presets (one cell per patch, 9 values per patch and channel), 7 at 14-pixel
patches (2x2 cells). `method.hog_cell` chooses another divisor. Deviation: none in the formula;
SlowFast's video MaskFeat (MaskMViT) leaves the Gaussian window out, mmpretrain's image
MaskFeat keeps it, and this follows the image one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

REFERENCE_CELL = 8  # pixels, the reference's cell side


def default_cell(patch_size: int) -> int:
    """The largest divisor of `patch_size` not above the reference's 8-pixel cell."""
    return max(d for d in range(1, min(patch_size, REFERENCE_CELL) + 1) if patch_size % d == 0)


def gaussian_window(size: int) -> torch.Tensor:
    """(size, size) Gaussian weights summing to 1, sigma = size // 2 (the reference's)."""
    n = torch.arange(size, dtype=torch.float32)
    line = torch.exp(-0.5 * ((n - n.mean()) / max(size // 2, 1)) ** 2)
    window = line[:, None] * line[None, :]
    return window / window.sum()


class PatchHOG(nn.Module):
    """Images (B, C, H, W) -> per-patch HOG (B, N, C * bins * k * k), k = patch // cell,
    patches in row-major grid order. No gradient flows: it is a target."""

    def __init__(self, patch_size: int, channels: int, bins: int = 9, cell: int | None = None):
        super().__init__()
        cell = default_cell(patch_size) if cell is None else cell
        if patch_size % cell:
            raise ValueError(f"HOG cell {cell} must divide the patch size {patch_size}")
        self.patch_size, self.channels, self.bins, self.cell = patch_size, channels, bins, cell
        sobel_x = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        sobel = torch.stack([sobel_x, sobel_x.t()])[:, None].repeat(channels, 1, 1, 1)
        self.register_buffer(
            "sobel", sobel, persistent=False
        )  # (2C, 1, 3, 3): x then y, per channel
        self.register_buffer("window", gaussian_window(patch_size), persistent=False)

    @property
    def dim(self) -> int:
        return self.channels * self.bins * (self.patch_size // self.cell) ** 2

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.pad(images.float(), (1, 1, 1, 1), mode="reflect")
        b, c, h, w = images.shape
        gx, gy = F.conv2d(x, self.sobel, groups=c).view(b, c, 2, h, w).unbind(dim=2)
        p = self.patch_size
        weight = self.window.repeat(h // p, w // p)  # one window centred on every patch
        magnitude = torch.sqrt(gx**2 + gy**2) * weight
        phase = torch.atan2(gx, gy) / math.pi * self.bins  # in [-bins, bins]
        index = phase.floor().long() % self.bins  # unsigned: opposite gradients share a bin
        votes = torch.zeros(b, c, self.bins, h, w, device=images.device)
        votes.scatter_add_(2, index[:, :, None], magnitude[:, :, None])
        cells = F.avg_pool2d(votes.flatten(1, 2), self.cell) * self.cell**2  # sums per cell
        cells = F.normalize(cells.view(b, c, self.bins, *cells.shape[-2:]), dim=2)
        k = p // self.cell
        gh, gw = h // p, w // p
        per_patch = cells.reshape(b, c * self.bins, gh, k, gw, k).permute(0, 2, 4, 1, 3, 5)
        return per_patch.reshape(b, gh * gw, self.dim)
