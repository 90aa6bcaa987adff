"""Model configuration and the ViT size presets (timm's names and sizes)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

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
    img_size: int | list[int] = 224
    in_chans: int = 3
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    drop_path_rate: float = 0.0
    pool: str = "cls"  # "cls" token or "avg" of patch tokens, for features
    # MAE decoder (the paper's default: 512 wide, 8 blocks, 16 heads).
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True

    @property
    def image_hw(self) -> tuple[int, int]:
        size = self.img_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def grid_hw(self) -> tuple[int, int]:
        h, w = self.image_hw
        assert self.patch_size is not None, "resolve the config first"
        return h // self.patch_size, w // self.patch_size

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_hw
        return gh * gw


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """Fill preset values into unset fields and check that the shapes fit together."""
    if cfg.preset not in PRESETS:
        raise ConfigError(
            f"model.preset: unknown preset {cfg.preset!r}; expected one of {sorted(PRESETS)}"
        )
    dim, depth, heads, patch = PRESETS[cfg.preset]
    defaults = {"embed_dim": dim, "depth": depth, "num_heads": heads, "patch_size": patch}
    cfg = replace(cfg, **{k: v for k, v in defaults.items() if getattr(cfg, k) is None})
    if isinstance(cfg.img_size, (list, tuple)):
        if len(cfg.img_size) != 2:
            raise ConfigError(
                f"model.img_size: expected an int or [height, width], got {cfg.img_size!r}"
            )
        cfg = replace(cfg, img_size=[int(cfg.img_size[0]), int(cfg.img_size[1])])
    h, w = cfg.image_hw
    p = cfg.patch_size
    if p <= 0 or h % p or w % p:
        raise ConfigError(f"model.img_size {h}x{w} is not divisible by model.patch_size {p}")
    if cfg.embed_dim % cfg.num_heads:
        raise ConfigError(
            f"model.embed_dim {cfg.embed_dim} is not divisible by model.num_heads {cfg.num_heads}"
        )
    if cfg.decoder_embed_dim % cfg.decoder_num_heads:
        raise ConfigError(
            f"model.decoder_embed_dim {cfg.decoder_embed_dim} is not divisible by "
            f"model.decoder_num_heads {cfg.decoder_num_heads}"
        )
    for name, dim_ in (("embed_dim", cfg.embed_dim), ("decoder_embed_dim", cfg.decoder_embed_dim)):
        if dim_ % 4:
            raise ConfigError(
                f"model.{name} {dim_} must be divisible by 4 for 2-D sin-cos position embeddings"
            )
    if not 0.0 <= cfg.mask_ratio < 1.0:
        raise ConfigError(f"model.mask_ratio must be in [0, 1), got {cfg.mask_ratio}")
    if cfg.pool not in ("cls", "avg"):
        raise ConfigError(f"model.pool must be 'cls' or 'avg', got {cfg.pool!r}")
    if cfg.in_chans < 1:
        raise ConfigError(f"model.in_chans must be >= 1, got {cfg.in_chans}")
    return cfg


def model_config_fields() -> list[str]:
    return [f.name for f in fields(ModelConfig)]
