"""What methods predict: pixels (raw, norm-pix per patch, or per cube channel as VideoMAE),
and the masked losses over them (MaskFeat's HOG target is in `mimkit.objectives.hog`)."""

from __future__ import annotations

import torch

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
