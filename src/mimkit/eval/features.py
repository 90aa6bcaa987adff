"""Frozen-encoder features for whole images: no masking, eval mode, batched, with progress."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mimkit.data.transforms import fit_to_model, normalize
from mimkit.models.vit import VisionTransformer
from mimkit.train.logging import progress_interval


@torch.no_grad()
def extract_features(
    encoder: VisionTransformer,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "features",
) -> torch.Tensor:
    """(N, D) float32 features of uint8 images (N, C, H, W), pooled per the encoder's config."""
    encoder = encoder.to(device).eval()
    chunks = []
    for start in tqdm(
        range(0, len(images), batch_size),
        desc=desc,
        unit="batch",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=progress_interval(),
    ):
        x = normalize(images[start : start + batch_size].to(device), mean, std)
        x = fit_to_model(x, encoder.cfg.input_size)
        chunks.append(encoder.features(x).float().cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, encoder.cfg.embed_dim)
