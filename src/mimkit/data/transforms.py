"""Batched augmentation on the device: uint8 in, normalised float out, no per-sample Python.

Random-resized-crop and horizontal flip are one affine resampling per batch
(`affine_grid` + `grid_sample`), so a whole batch is augmented by two kernel launches on GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (or [0, 255] float) (B, C, H, W) -> float32 standardised per channel."""
    c = images.shape[1]
    if len(mean) not in (1, c) or len(std) not in (1, c):
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for {c}-channel images")
    if len(mean) == 1 and len(std) == 1:  # plain scalars: nothing to copy to the device
        return (images.float() / 255.0 - mean[0]) / std[0]
    # built on the host and copied without a stream sync (a blocking copy would stall the
    # training step on GPU once per batch); shaped for (B, C, H, W) images or (B, C, T, H, W) clips
    shape = (1, -1) + (1,) * (images.ndim - 2)
    m = torch.tensor(mean, dtype=torch.float32).view(shape)
    s = torch.tensor(std, dtype=torch.float32).view(shape)
    m, s = m.to(images.device, non_blocking=True), s.to(images.device, non_blocking=True)
    return (images.float() / 255.0 - m) / s


def denormalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Inverse of `normalize`, to [0, 1] floats for saving pictures."""
    shape = (1, -1) + (1,) * (images.ndim - 2)
    m = torch.tensor(mean, device=images.device, dtype=torch.float32).view(shape)
    s = torch.tensor(std, device=images.device, dtype=torch.float32).view(shape)
    return (images.float() * s + m).clamp(0, 1)


def random_resized_crop_flip(
    images: torch.Tensor,
    out_hw: tuple[int, int],
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample random crop (area fraction in `scale`, aspect in `ratio`), resized, maybe flipped.

    Works on float images; crops that would not fit are clipped to the image, the rare case
    torchvision handles with a fallback centre crop.
    """
    theta = crop_flip_theta(
        images.shape[0], images.shape[-2:], scale, ratio, hflip, images.device, generator
    )
    return resample(images, theta, out_hw)


def crop_flip_theta(
    batch: int,
    in_hw: tuple[int, int] | torch.Size,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(batch, 2, 3) affine crop-and-flip parameters, drawn separately from the images.

    Kept apart so distributed training can draw them for the global batch and let each rank
    take its rows: a sample's augmentation then does not depend on the world size.
    """
    b, dev = batch, device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, device=dev, generator=generator)

    area = uniform(*scale)
    log_ratio = uniform(math.log(ratio[0]), math.log(ratio[1]))
    aspect = log_ratio.exp()
    h_in, w_in = in_hw
    # crop width and height as fractions of the image side, area = w * h * (w_in * h_in)
    w = (area * aspect * h_in / w_in).sqrt().clamp(max=1.0)
    h = (area / aspect * w_in / h_in).sqrt().clamp(max=1.0)
    cx = (uniform(0.0, 1.0) * (1 - w) + w / 2) * 2 - 1  # crop centre in [-1, 1] coordinates
    cy = (uniform(0.0, 1.0) * (1 - h) + h / 2) * 2 - 1
    flip = torch.ones(b, device=dev)
    if hflip:
        flip = torch.where(torch.rand(b, device=dev, generator=generator) < 0.5, -flip, flip)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return theta


def resample(images: torch.Tensor, theta: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Apply per-sample affine crops `theta` (B, 2, 3) and resize to `out_hw`, bilinear."""
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], *out_hw], align_corners=False)
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )


def center_crop_leading(x: torch.Tensor, length: int) -> torch.Tensor:
    """(B, C, L, H, W) -> (B, C, length, H, W): the middle `length` frames (or slices)."""
    total = x.shape[2]
    if total < length:
        raise ValueError(f"clip has {total} frames/slices, fewer than the model's {length}")
    start = (total - length) // 2
    return x[:, :, start : start + length]


def random_crop_leading(
    x: torch.Tensor, length: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random window of `length` frames per sample, gathered in one call (no Python loop)."""
    b, c, total, h, w = x.shape
    if total < length:
        raise ValueError(f"clip has {total} frames/slices, fewer than the model's {length}")
    starts = torch.randint(0, total - length + 1, (b,), device=x.device, generator=generator)
    index = (starts[:, None] + torch.arange(length, device=x.device))[:, None, :, None, None]
    return torch.gather(x, 2, index.expand(b, c, length, h, w))


def augment_clips(
    clips: torch.Tensor,
    out_size: tuple[int, int, int],
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Clips or volumes (B, C, L, H, W), float: random temporal (depth) crop, then one random
    resized crop and flip per sample, the same for all its frames (so motion stays intact)."""
    t, h, w = out_size
    x = random_crop_leading(clips, t, generator)
    b, c = x.shape[:2]
    flat = x.reshape(b, c * t, *x.shape[-2:])  # frames as channels: one affine grid per clip
    flat = random_resized_crop_flip(flat, (h, w), scale, ratio, hflip, generator)
    return flat.reshape(b, c, t, h, w)


def fit_to_model(x: torch.Tensor, input_size: tuple[int, ...]) -> torch.Tensor:
    """Deterministic fit for evaluation: clips/volumes longer than the model are centre-cropped."""
    if x.ndim == 5 and len(input_size) == 3:
        return center_crop_leading(x, input_size[0])
    return x
