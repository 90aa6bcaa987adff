"""Mixup / CutMix with label smoothing for fine-tuning, as one batched operation.

Each batch is mixed with itself reversed (timm's "batch" mode): Mixup blends whole images,
CutMix pastes a box whose area sets the label weight. Randomness comes from a NumPy generator
the caller seeds per step, so a resumed run draws exactly the same mixes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    return F.one_hot(labels, num_classes).float() * (1.0 - smoothing) + off


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of a box covering about 1 - lam of the image, clipped to it."""
    ratio = float(np.sqrt(1.0 - lam))
    ch, cw = int(h * ratio), int(w * ratio)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    return (
        max(cy - ch // 2, 0),
        min(cy + ch // 2, h),
        max(cx - cw // 2, 0),
        min(cx + cw // 2, w),
    )


def mix_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    rng: np.random.Generator,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    switch_prob: float = 0.5,
    smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed images, soft targets). With both alphas 0 only label smoothing applies."""
    targets = smooth_one_hot(labels, num_classes, smoothing)
    use_mixup, use_cutmix = mixup_alpha > 0, cutmix_alpha > 0
    if not (use_mixup or use_cutmix):
        return images, targets
    cutmix = use_cutmix and (not use_mixup or rng.random() < switch_prob)
    lam = float(
        rng.beta(cutmix_alpha, cutmix_alpha) if cutmix else rng.beta(mixup_alpha, mixup_alpha)
    )
    flipped = images.flip(0)
    if cutmix:
        h, w = images.shape[-2:]
        y0, y1, x0, x1 = cutmix_box(h, w, lam, rng)
        images = images.clone()
        images[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        images = images * lam + flipped * (1.0 - lam)
    return images, targets * lam + targets.flip(0) * (1.0 - lam)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
