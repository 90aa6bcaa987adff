"""Frozen-encoder features for whole images: no masking, eval mode, batched, with progress.

Features are one vector per image: the cls token or the average of the patch tokens, taken
after the final block (the default) or after an intermediate `block`, always through the
encoder's final LayerNorm so every block gives features on the same scale.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mimkit.data.transforms import fit_to_model, normalize
from mimkit.errors import ConfigError
from mimkit.models.vit import VisionTransformer
from mimkit.progress import progress_interval

POOLS = ("cls", "avg")


def check_feature_settings(encoder: VisionTransformer, pool: str | None, block: int | None) -> None:
    if pool is not None and pool not in POOLS:
        raise ConfigError(f"pool must be one of {list(POOLS)}, got {pool!r}")
    if pool == "cls" and encoder.num_prefix_tokens == 0:
        raise ConfigError("pool 'cls': this encoder has no cls token; use pool 'avg'")
    depth = len(encoder.blocks)
    if block is not None and not 1 <= block <= depth:
        raise ConfigError(f"block must be between 1 and the encoder depth {depth}, got {block}")


def pooled_tokens(
    encoder: VisionTransformer, x: torch.Tensor, pool: str | None = None, block: int | None = None
) -> torch.Tensor:
    """(B, D) features of a normalised batch; `pool`/`block` default to the encoder's config/last."""
    pool = pool or encoder.cfg.pool
    if block is None or block == len(encoder.blocks):
        tokens = encoder(x)
    else:
        _, hidden = encoder(x, return_hidden=True)
        tokens = encoder.norm(hidden[block])
    if pool == "avg":
        return tokens[:, encoder.num_prefix_tokens :].mean(dim=1)
    return tokens[:, 0]


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
    pool: str | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """(N, D) float32 features of uint8 images (N, C, H, W); pool/block as in `pooled_tokens`."""
    check_feature_settings(encoder, pool, block)
    was_training = encoder.training
    encoder = encoder.to(device).eval()
    chunks = []
    try:
        for start in tqdm(
            range(0, len(images), batch_size),
            desc=desc,
            unit="batch",
            disable=not progress,
            dynamic_ncols=True,
            mininterval=progress_interval(),
        ):
            x = images[start : start + batch_size].to(device)
            if x.ndim != 3:  # point clouds (B, P, 3) are coordinates, not pixels
                # GeoTIFF nodata (NaN) reads as the band mean: 0 once normalised
                x = fit_to_model(torch.nan_to_num(normalize(x, mean, std)), encoder.cfg.input_size)
            chunks.append(pooled_tokens(encoder, x, pool, block).float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, encoder.cfg.embed_dim)
