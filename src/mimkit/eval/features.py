"""Frozen-encoder features for whole images: no masking, eval mode, batched, with progress.

Features are one vector per image: the cls token or the average of the patch tokens, taken
after the final block (the default) or after an intermediate `block`, always through the
encoder's final LayerNorm so every block gives features on the same scale.

Samples with several inputs (`data.source: multi`) are encoded by their method: an
`InputsEncoder` takes the dict of inputs, each normalised with its own statistics, and returns
the method's `encode` features (its own pooling, after its last block).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mimkit.data.config import DataConfig
from mimkit.data.multi import Inputs, sample_count
from mimkit.data.transforms import fit_to_model, normalize
from mimkit.errors import ConfigError
from mimkit.models.vit import VisionTransformer
from mimkit.progress import progress_interval

POOLS = ("cls", "avg")
Stats = list[float] | dict[str, list[float]]  # per channel; per input for several inputs


class InputsEncoder(nn.Module):
    """A method whose samples have several inputs, as the evaluation's encoder: a dict of
    normalised inputs in, the method's `encode` features (B, D) out. `cfg`, `blocks` and the
    prefix are those of the method's encoder (the feature cache's key and the settings' checks
    read them)."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    @property
    def cfg(self) -> Any:
        return self.method.encoder.cfg

    @property
    def blocks(self) -> nn.ModuleList:
        return self.method.encoder.blocks

    @property
    def num_prefix_tokens(self) -> int:
        return self.method.encoder.num_prefix_tokens

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.method.encode(inputs)


def feature_encoder(method: nn.Module, data: DataConfig) -> nn.Module:
    """What features of `data` are taken with: the method's encoder, or for samples with
    several inputs the method itself (`InputsEncoder`)."""
    return InputsEncoder(method) if data.source == "multi" else method.encoder


def feature_stats(data: DataConfig) -> tuple[Stats, Stats]:
    """(mean, std) the features of `data` are normalised with: `data.mean/std`, or for
    samples with several inputs {input: its mean} and {input: its std}."""
    if data.source == "multi":
        return (
            {name: spec.mean for name, spec in data.inputs.items()},
            {name: spec.std for name, spec in data.inputs.items()},
        )
    return data.mean, data.std


def check_feature_settings(encoder: VisionTransformer, pool: str | None, block: int | None) -> None:
    if isinstance(encoder, InputsEncoder):
        if pool not in (None, encoder.cfg.pool) or block not in (None, len(encoder.blocks)):
            raise ConfigError(
                "pool/block: features of samples with several inputs are the method's own "
                f"(pool {encoder.cfg.pool!r}, last block); other choices are not available"
            )
        return
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
    if isinstance(encoder, InputsEncoder):
        return encoder(x)
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
    encoder: VisionTransformer | InputsEncoder,
    images: torch.Tensor | dict[str, torch.Tensor],
    mean: Stats,
    std: Stats,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "features",
    pool: str | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """(N, D) float32 features of uint8 images (N, C, H, W); pool/block as in `pooled_tokens`.

    Several inputs per sample: `images` a dict of (N, C_k, H, W), `mean`/`std` dicts by input,
    `encoder` an `InputsEncoder`."""
    check_feature_settings(encoder, pool, block)
    was_training = encoder.training
    encoder = encoder.to(device).eval()
    chunks = []
    try:
        for start in tqdm(
            range(0, sample_count(images), batch_size),
            desc=desc,
            unit="batch",
            disable=not progress,
            dynamic_ncols=True,
            mininterval=progress_interval(),
        ):
            if isinstance(images, dict):  # several inputs: each with its own statistics
                rows = Inputs(images)[start : start + batch_size].to(device)
                x = Inputs({k: normalize(v, mean[k], std[k]) for k, v in rows.items()})
                chunks.append(pooled_tokens(encoder, x, pool, block).float().cpu())
                continue
            x = images[start : start + batch_size].to(device)
            if x.ndim != 3:  # point clouds (B, P, 3) are coordinates, not pixels
                x = fit_to_model(normalize(x, mean, std), encoder.cfg.input_size)
            chunks.append(pooled_tokens(encoder, x, pool, block).float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, encoder.cfg.embed_dim)
