"""What methods predict: pixels (raw, norm-pix per patch, or per cube channel as VideoMAE),
histograms of oriented gradients (MaskFeat), and the masked losses over them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORM_PIX_EPS = 1e-6


def patch_stats(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and std (unbiased variance, as the MAE reference) used by norm-pix."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return mean, (var + NORM_PIX_EPS) ** 0.5


def cube_channel_norm(patches: torch.Tensor, channels: int) -> torch.Tensor:
    """VideoMAE's per-cube target: each channel of a patch standardised over the patch's pixels.

    Patch vectors are laid out (..., c) so channels are the fastest axis; the formula is
    VideoMAE's exactly: (x - mean) / (std_unbiased + 1e-6).
    """
    b, n, d = patches.shape
    x = patches.reshape(b, n, d // channels, channels)
    x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, keepdim=True).sqrt() + NORM_PIX_EPS)
    return x.reshape(b, n, d)


def pixel_target(patches: torch.Tensor, norm_pix: bool, per: str, channels: int) -> torch.Tensor:
    """Patches as they are, or normalised per patch (`per='patch'`, MAE's norm-pix) or per
    channel of each cube (`per='channel'`, VideoMAE)."""
    if not norm_pix:
        return patches
    if per == "channel":
        return cube_channel_norm(patches, channels)
    mean, std = patch_stats(patches)
    return (patches - mean) / std


def unnormalise_prediction(
    pred: torch.Tensor, patches: torch.Tensor, per: str, channels: int
) -> torch.Tensor:
    """A norm-pix prediction mapped back to pixels with the input's own patch statistics, so
    pictures show what the model predicted rather than normalised noise."""
    if per == "channel":
        cubes = patches.reshape(*patches.shape[:2], -1, channels)
        mean = cubes.mean(dim=-2, keepdim=True)
        std = cubes.var(dim=-2, keepdim=True).sqrt() + NORM_PIX_EPS
        return (pred.reshape(cubes.shape) * std + mean).reshape(patches.shape)
    mean, std = patch_stats(patches)
    return pred * std + mean


def masked_mse(pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Mean over hidden patches of each patch's mean squared error; visible patches cost nothing
    (nor hidden ones of weight 0: a batch with none left costs 0, not NaN)."""
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * hidden).sum() / hidden.sum().clamp_min(1e-12)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the pixels of hidden patches."""
    per_patch = (pred - target).abs().mean(dim=-1)
    return (per_patch * hidden).sum() / hidden.sum()


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
