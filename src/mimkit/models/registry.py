"""Model configuration and the ViT size presets (timm's names and sizes)."""

from __future__ import annotations

import math
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
    target_norm: str = (
        "patch"  # norm-pix over the whole patch (MAE) | per channel of a cube (VideoMAE)
    )
    masking: str = "random"  # random (MAE) | tube (VideoMAE clips) | any mimkit.mask_shapes name
    decoder_mask_ratio: float = 0.0  # > 0: VideoMAE V2 running-cell decoder masking
    # which method of the family (mimkit.objectives.registry) and its own settings
    method: str = "mae"  # mae | simmim | crossmae | maskfeat | maskalign | mfm | g2sd
    mask_patch: int = 2  # masking 'coarse' (SimMIM): model patches per mask patch side
    predict_fraction: float = 0.25  # crossmae: share of hidden patches reconstructed
    mix_layers: bool = True  # crossmae: decoder blocks read a learned mix of encoder blocks
    hog_bins: int = 9  # maskfeat: orientation bins of the HOG target
    teacher: str | None = None  # maskalign, g2sd: checkpoint of the frozen teacher
    teacher_dim: int | None = None  # g2sd: width of the teacher's decoder (read from teacher)
    freq_radius: float = 16 / 224  # mfm: radius of the hidden disc, as a fraction of the side

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

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch vector: prod(patch_shape) * in_chans."""
        return math.prod(self.patch_shape) * self.in_chans


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
        if len(cfg.img_size) not in (2, 3):
            raise ConfigError(
                "model.img_size: expected an int, [height, width] or [frames/depth, height, width], "
                f"got {cfg.img_size!r}"
            )
        cfg = replace(cfg, img_size=[int(s) for s in cfg.img_size])
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
                f"model.{name} {dim_} must be divisible by 4 for sin-cos position embeddings"
            )
    if cfg.pos_embed not in ("sincos", "sincos_index"):
        raise ConfigError(
            f"model.pos_embed must be 'sincos' or 'sincos_index', got {cfg.pos_embed!r}"
        )
    if cfg.target_norm not in ("patch", "channel"):
        raise ConfigError(
            f"model.target_norm must be 'patch' or 'channel', got {cfg.target_norm!r}"
        )
    from mimkit.mask_shapes import STRATEGIES  # the 2-D strategies of the MAE family

    if cfg.masking not in ("tube", *STRATEGIES):
        raise ConfigError(
            f"model.masking must be one of {['tube', *STRATEGIES]}, got {cfg.masking!r}"
        )
    if cfg.masking not in ("random", "tube") and len(cfg.input_size) != 2:
        raise ConfigError(f"model.masking {cfg.masking!r} is for 2-D images; clips use 'tube'")
    if cfg.masking == "tube" and len(cfg.input_size) != 3:
        raise ConfigError("model.masking 'tube' needs clips: a 3-entry model.img_size [T, H, W]")
    if not 0.0 <= cfg.decoder_mask_ratio < 1.0:
        raise ConfigError(
            f"model.decoder_mask_ratio must be in [0, 1), got {cfg.decoder_mask_ratio}"
        )
    if cfg.decoder_mask_ratio > 0:
        gh, gw = cfg.grid_hw
        if len(cfg.input_size) != 3 or gh % 2 or gw % 2 or int(4 * cfg.decoder_mask_ratio) == 0:
            raise ConfigError(
                "model.decoder_mask_ratio (running-cell masking) needs clips with an even patch "
                f"grid and a ratio of at least 0.25; got grid {cfg.grid_shape}, "
                f"ratio {cfg.decoder_mask_ratio}"
            )
    if not 0.0 <= cfg.mask_ratio < 1.0:
        raise ConfigError(f"model.mask_ratio must be in [0, 1), got {cfg.mask_ratio}")
    if cfg.pool not in ("cls", "avg"):
        raise ConfigError(f"model.pool must be 'cls' or 'avg', got {cfg.pool!r}")
    if cfg.pool == "cls" and not cfg.cls_token:
        raise ConfigError("model.pool 'cls' needs model.cls_token true; use pool 'avg' without it")
    if cfg.in_chans < 1:
        raise ConfigError(f"model.in_chans must be >= 1, got {cfg.in_chans}")
    _check_method(cfg)
    return cfg


METHODS = ("mae", "simmim", "crossmae", "maskfeat", "maskalign", "mfm", "g2sd")


def _check_method(cfg: ModelConfig) -> None:
    if cfg.method not in METHODS:
        raise ConfigError(f"model.method must be one of {list(METHODS)}, got {cfg.method!r}")
    if cfg.method != "mae" and len(cfg.input_size) != 2:
        raise ConfigError(
            f"model.method {cfg.method!r} is for 2-D images; clips and volumes use 'mae'"
        )
    if cfg.masking == "coarse":
        gh, gw = cfg.grid_hw
        if cfg.mask_patch < 1 or gh % cfg.mask_patch or gw % cfg.mask_patch:
            raise ConfigError(
                f"model.mask_patch {cfg.mask_patch} must divide the patch grid {gh}x{gw} "
                "for masking 'coarse'"
            )
    if not 0.0 < cfg.predict_fraction <= 1.0:
        raise ConfigError(f"model.predict_fraction must be in (0, 1], got {cfg.predict_fraction}")
    if cfg.hog_bins < 2:
        raise ConfigError(f"model.hog_bins must be >= 2, got {cfg.hog_bins}")
    if cfg.method in ("maskalign", "g2sd") and not cfg.teacher:
        raise ConfigError(
            f"model.teacher: method {cfg.method!r} needs the checkpoint of a teacher model"
        )
    if not 0.0 < cfg.freq_radius < 0.5:
        raise ConfigError(f"model.freq_radius must be in (0, 0.5), got {cfg.freq_radius}")


def model_config_fields() -> list[str]:
    return [f.name for f in fields(ModelConfig)]
