"""Random resized crops and flips as per-sample affine maps, drawn apart from the images.

The geometry under the loop's augmentation (`mimkit.data.transforms`) and under a method that
draws views of its own (iBOT's global crops): parameters are drawn for a whole (global) batch,
so each process can take its rows, then one `affine_grid` + `grid_sample` applies them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
