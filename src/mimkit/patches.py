"""Images <-> flattened patches, in the MAE/HF layout: each patch vector is (p, q, channel)."""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p*p*C), patches in row-major order."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not divisible by patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(
    patches: torch.Tensor, patch_size: int, grid_hw: tuple[int, int], channels: int
) -> torch.Tensor:
    """Inverse of `patchify`: (B, gh*gw, p*p*C) -> (B, C, gh*p, gw*p)."""
    b = patches.shape[0]
    gh, gw = grid_hw
    p = patch_size
    x = patches.reshape(b, gh, gw, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, channels, gh * p, gw * p)
