"""Batched augmentation on the device: uint8 in, normalised float out, no per-sample Python.

Random-resized-crop and horizontal flip are one affine resampling per batch
(`affine_grid` + `grid_sample`), so a whole batch is augmented by two kernel launches on GPU.
"""

from __future__ import annotations

import torch

from mimkit.crops import crop_flip_theta, resample


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
