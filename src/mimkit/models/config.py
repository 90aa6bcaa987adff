"""The model section of a run config: encoder and decoder geometry, and the ViT size presets.

Only shapes live here; what is hidden is `masking:` (mimkit.masking) and what is predicted
is `method:` (mimkit.objectives).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from mimkit.errors import ConfigError

# name -> (embed_dim, depth, num_heads, patch_size); mlp_ratio is 4 for all of them.
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "vit_tiny": (192, 12, 3, 16),
    "vit_small": (384, 12, 6, 16),
    "vit_base": (768, 12, 12, 16),
    "vit_large": (1024, 24, 16, 16),
    "vit_huge": (1280, 32, 16, 14),
}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; saved resolved inside every checkpoint.

    Fields left at None take the preset's value when the config is resolved.
    """

    preset: str = "vit_tiny"
    img_size: int | list[int] = 224  # H, [H, W], or [T, H, W] / [D, H, W] for clips and volumes
    in_chans: int = 3
    patch_size: int | None = None
    tubelet_size: int | None = None  # 3-D inputs: patch extent along T/D; None: patch_size (cubes)
    cls_token: bool = True  # False: no prefix token (VideoMAE); features then need pool=avg
    pos_embed: str = (
        "sincos"  # sincos: separable per-axis table (MAE) | sincos_index: VideoMAE's 1-D
    )
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    # Structurally pruned encoders (mimkit.compress.optin): heads and MLP hidden width per block.
    # None: num_heads and int(embed_dim * mlp_ratio) in every block. Head width stays
    # embed_dim // num_heads either way.
    block_heads: list[int] | None = None
    block_mlp_hidden: list[int] | None = None
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    drop_path_rate: float = 0.0
    pool: str = "cls"  # "cls" token or "avg" of patch tokens, for features
    # MAE decoder (the paper's default: 512 wide, 8 blocks, 16 heads).
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16

    @property
    def input_size(self) -> tuple[int, ...]:
        """Spatial (and temporal) input extent: (H, W), or (T, H, W) for clips and volumes."""
        size = self.img_size
        return (size, size) if isinstance(size, int) else tuple(int(s) for s in size)

    @property
    def image_hw(self) -> tuple[int, int]:
        h, w = self.input_size[-2:]
        return h, w

    @property
    def patch_shape(self) -> tuple[int, ...]:
        """Patch extent per input axis; an int `patch_size` keeps 2-D models exactly as before."""
        assert self.patch_size is not None, "resolve the config first"
        p = self.patch_size
        if len(self.input_size) == 2:
            return (p, p)
        return (self.tubelet_size or p, p, p)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(s // p for s, p in zip(self.input_size, self.patch_shape, strict=True))

    @property
    def grid_hw(self) -> tuple[int, int]:
        gh, gw = self.grid_shape[-2:]
        return gh, gw

    @property
    def num_patches(self) -> int:
        return math.prod(self.grid_shape)

    def heads_per_block(self) -> list[int]:
        """Attention heads of each encoder block (uniform unless `block_heads` is set)."""
        assert self.depth is not None and self.num_heads is not None, "resolve the config first"
        return list(self.block_heads) if self.block_heads else [self.num_heads] * self.depth

    def mlp_hidden_per_block(self) -> list[int]:
        """MLP hidden width of each encoder block (uniform unless `block_mlp_hidden` is set)."""
        assert self.depth is not None and self.embed_dim is not None, "resolve the config first"
        if self.block_mlp_hidden:
            return list(self.block_mlp_hidden)
        return [int(self.embed_dim * self.mlp_ratio)] * self.depth

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch vector: prod(patch_shape) * in_chans."""
        return math.prod(self.patch_shape) * self.in_chans


def with_blocks(cfg: ModelConfig, keep: list[int]) -> ModelConfig:
    """The config of an encoder holding only blocks `keep` (in order): depth and any per-block
    sizes follow."""
    sizes = {
        name: [getattr(cfg, name)[i] for i in keep]
        for name in ("block_heads", "block_mlp_hidden")
        if getattr(cfg, name)
    }
    return replace(cfg, depth=len(keep), **sizes)


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """Fill preset values into unset fields and check that the shapes fit together."""
    cfg = _with_preset(cfg)
    _check_sizes(cfg)
    _check_patches(cfg)
    _check_widths(cfg)
    if cfg.pos_embed not in ("sincos", "sincos_index"):
        raise ConfigError(
            f"model.pos_embed must be 'sincos' or 'sincos_index', got {cfg.pos_embed!r}"
        )
    if cfg.pool not in ("cls", "avg"):
        raise ConfigError(f"model.pool must be 'cls' or 'avg', got {cfg.pool!r}")
    if cfg.pool == "cls" and not cfg.cls_token:
        raise ConfigError("model.pool 'cls' needs model.cls_token true; use pool 'avg' without it")
    if cfg.in_chans < 1:
        raise ConfigError(f"model.in_chans must be >= 1, got {cfg.in_chans}")
    return cfg


def _with_preset(cfg: ModelConfig) -> ModelConfig:
    """The preset's sizes in the fields left unset, and img_size as an int or a list of ints."""
    if cfg.preset not in PRESETS:
        raise ConfigError(
            f"model.preset: unknown preset {cfg.preset!r}; expected one of {sorted(PRESETS)}"
        )
    dim, depth, heads, patch = PRESETS[cfg.preset]
    defaults = {"embed_dim": dim, "depth": depth, "num_heads": heads, "patch_size": patch}
    cfg = replace(cfg, **{k: v for k, v in defaults.items() if getattr(cfg, k) is None})
    if isinstance(cfg.img_size, (list, tuple)):
        if len(cfg.img_size) not in (2, 3):
            raise ConfigError(
                "model.img_size: expected an int, [height, width] or [frames/depth, height, width], "
                f"got {cfg.img_size!r}"
            )
        cfg = replace(cfg, img_size=[int(s) for s in cfg.img_size])
    return cfg


def _check_sizes(cfg: ModelConfig) -> None:
    """Counts and widths at least 1, rates in range: before any of them divides another."""
    for name in ("embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_num_heads"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"model.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.decoder_depth < 0:
        raise ConfigError(f"model.decoder_depth must be >= 0, got {cfg.decoder_depth}")
    if any(s < 1 for s in cfg.input_size):
        raise ConfigError(f"model.img_size must be >= 1 on every axis, got {cfg.img_size}")
    if not (cfg.mlp_ratio > 0 and cfg.layer_norm_eps > 0):
        raise ConfigError(
            f"model.mlp_ratio and model.layer_norm_eps must be > 0, got {cfg.mlp_ratio}, "
            f"{cfg.layer_norm_eps}"
        )
    if not 0.0 <= cfg.drop_path_rate < 1.0:
        raise ConfigError(f"model.drop_path_rate must be in [0, 1), got {cfg.drop_path_rate}")


def _check_patches(cfg: ModelConfig) -> None:
    if cfg.tubelet_size is not None and (len(cfg.input_size) != 3 or cfg.tubelet_size <= 0):
        raise ConfigError(
            f"model.tubelet_size {cfg.tubelet_size}: needs a 3-entry model.img_size and a value >= 1"
        )
    p = cfg.patch_size
    size = "x".join(map(str, cfg.input_size))
    patch = "x".join(map(str, cfg.patch_shape)) if p > 0 else str(p)
    if p <= 0 or any(s % q for s, q in zip(cfg.input_size, cfg.patch_shape, strict=True)):
        raise ConfigError(
            f"model.img_size {size} is not divisible by the patch {patch} "
            "(model.patch_size, model.tubelet_size)"
        )


def _check_widths(cfg: ModelConfig) -> None:
    if cfg.embed_dim % cfg.num_heads:
        raise ConfigError(
            f"model.embed_dim {cfg.embed_dim} is not divisible by model.num_heads {cfg.num_heads}"
        )
    if cfg.decoder_embed_dim % cfg.decoder_num_heads:
        raise ConfigError(
            f"model.decoder_embed_dim {cfg.decoder_embed_dim} is not divisible by "
            f"model.decoder_num_heads {cfg.decoder_num_heads}"
        )
    for name in ("block_heads", "block_mlp_hidden"):
        sizes = getattr(cfg, name)
        if sizes is not None and (len(sizes) != cfg.depth or min(sizes, default=1) < 1):
            raise ConfigError(
                f"model.{name}: expected {cfg.depth} (model.depth) counts >= 1, got {sizes}"
            )
    if cfg.block_heads and max(cfg.block_heads) > cfg.num_heads:
        raise ConfigError(
            f"model.block_heads {cfg.block_heads}: a block has more heads than model.num_heads "
            f"{cfg.num_heads}, which sets the head width"
        )
    for name, dim_ in (("embed_dim", cfg.embed_dim), ("decoder_embed_dim", cfg.decoder_embed_dim)):
        if dim_ % 4:
            raise ConfigError(
                f"model.{name} {dim_} must be divisible by 4 for sin-cos position embeddings"
            )
