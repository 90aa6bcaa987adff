"""timm's VisionTransformer: encoder state dicts both ways, plus timm's Hub folder layout.

mimkit's encoder already uses timm's parameter names, so the conversion is the `encoder.`
prefix, dropping what a mimkit encoder has no place for (a classifier `head.*`), and two
layouts timm allows: `no_embed_class` position tables (no cls row: a zero row is exactly
equivalent, since mimkit adds `pos_embed[:, :1]` to the cls token) and an avg-pool `fc_norm`
(refused: mimkit normalises before pooling, so the features would differ).

Export writes `model.safetensors` (strict-loadable into `timm.create_model(preset,
num_classes=0, global_pool='token')`) and a timm-style `config.json` naming the architecture
and its arguments. Feature pooling travels: `model.pool: avg` is timm's `global_pool='avg',
fc_norm=False` (the final norm on every token, then the mean of the patch tokens: mimkit's avg),
and reading such a config gives `pool: avg` back. timm itself is optional (it needs
torchvision) and never imported here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from mimkit.errors import CheckpointError
from mimkit.interop.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImportedModel,
    count_blocks,
    guess_num_heads,
    preset_for,
    square_grid,
)
from mimkit.interop.safe_load import read_tensor_file
from mimkit.models.config import ModelConfig, resolve_model_config

log = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
WEIGHTS = "model.safetensors"
TIMM_EPS = 1e-6  # timm's ViT LayerNorm eps; not stored in a state dict

# timm architecture names of the presets, for config.json; model_args override every size.
_TIMM_ARCH = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
    "vit_huge": "vit_huge_patch14_224",
}


def mimkit_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mimkit model (or encoder) state -> timm VisionTransformer state (encoder only)."""
    if not any(k.startswith("encoder.") for k in state):
        return {k: v.detach().contiguous() for k, v in state.items()}
    return {
        k[len("encoder.") :]: v.detach().contiguous()
        for k, v in state.items()
        if k.startswith("encoder.")
    }


def _is_square(n: int) -> bool:
    return n > 0 and int(round(n**0.5)) ** 2 == n


def _grid_tokens(state: dict[str, torch.Tensor], img_size) -> int:
    """Patch count for `img_size` (int or [h, w]) at the checkpoint's patch size; -1 unknown."""
    if img_size is None:
        return -1
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    p = state["patch_embed.proj.weight"].shape[-1]
    return (h // p) * (w // p)


def timm_to_mimkit(
    state: dict[str, torch.Tensor], where: str, img_size: int | list[int] | None = None
) -> dict[str, torch.Tensor]:
    """timm VisionTransformer state -> mimkit `encoder.*`; refuses layouts mimkit cannot run.

    `img_size` (from timm's config.json) tells a cls row from a grid row in `pos_embed`;
    without it the count decides (1 + square grid, else square grid)."""
    state = dict(state)
    if any(k.startswith(("vit.", "embeddings.", "encoder.layer.")) for k in state):
        raise CheckpointError(
            f"{where}: these are Hugging Face weights; import their folder (with config.json)"
        )
    dropped = sorted(k for k in state if k.startswith("head."))
    for k in dropped:
        del state[k]
    if dropped:
        log.info("%s: classifier weights dropped (%s)", where, ", ".join(dropped))
    if any(k.startswith("fc_norm.") for k in state):
        raise CheckpointError(
            f"{where}: has fc_norm (timm global_pool='avg' layout); mimkit applies the final "
            "norm before pooling, so this encoder cannot be reproduced exactly"
        )
    if not {"cls_token", "pos_embed", "patch_embed.proj.weight"} <= set(state):
        raise CheckpointError(f"{where}: no cls_token/pos_embed; not a timm ViT with class token")
    unknown = sorted(
        k
        for k in state
        if not k.startswith(("blocks.", "patch_embed.proj.", "norm."))
        and k not in ("cls_token", "pos_embed")
    )
    if unknown:
        raise CheckpointError(f"{where}: weights mimkit's ViT has no place for: {unknown[:5]}")
    pos = state["pos_embed"]
    if pos.shape[1] == _grid_tokens(state, img_size) and img_size is not None:
        has_cls_row = False
    elif img_size is not None:
        has_cls_row = True
    else:  # guess from the count: 1 + a square grid, else a square grid
        n = pos.shape[1]
        has_cls_row = _is_square(n - 1) or not _is_square(n)
    if not has_cls_row:  # no_embed_class
        state["pos_embed"] = torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], dim=1)
        log.info("%s: position table has no cls row (no_embed_class); a zero row is added", where)
    return {f"encoder.{k}": v for k, v in state.items()}


def infer_model_config(
    state: dict[str, torch.Tensor], args: dict, where: str, notes: list[str]
) -> ModelConfig:
    """Architecture of a mimkit-named encoder state, with timm `model_args` where given."""
    proj = state["encoder.patch_embed.proj.weight"]
    dim, in_chans, p, p2 = proj.shape
    if p != p2:
        raise CheckpointError(f"{where}: patch {p}x{p2}; mimkit needs square patches")
    depth = count_blocks(state, "encoder.blocks.")
    hidden = state["encoder.blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * dim
    if "img_size" in args:
        size = args["img_size"]
        hw = (size, size) if isinstance(size, int) else tuple(size)
    else:
        gh, gw = square_grid(state["encoder.pos_embed"].shape[1] - 1, where)
        hw = (gh * p, gw * p)
    heads = args.get("num_heads") or guess_num_heads(dim, where, notes)
    pool = "avg" if args.get("global_pool") == "avg" and args.get("fc_norm") is False else "cls"
    cfg = ModelConfig(
        preset=preset_for(dim, depth),
        img_size=hw[0] if hw[0] == hw[1] else list(hw),
        in_chans=in_chans,
        patch_size=p,
        embed_dim=dim,
        depth=depth,
        num_heads=int(heads),
        mlp_ratio=hidden / dim,
        qkv_bias="encoder.blocks.0.attn.qkv.bias" in state,
        layer_norm_eps=TIMM_EPS,
        pool=pool,
    )
    return resolve_model_config(cfg)


def read_timm(path: Path) -> ImportedModel:
    """A timm Hub folder (config.json + model.safetensors) or a bare state-dict file."""
    args: dict = {}
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    weights = path
    if path.is_dir():
        weights = path / WEIGHTS
        if (path / CONFIG_JSON).is_file():
            config = json.loads((path / CONFIG_JSON).read_text())
            args = dict(config.get("model_args") or {})
            args.setdefault("global_pool", config.get("global_pool"))
            pretrained = config.get("pretrained_cfg") or {}
            mean, std = pretrained.get("mean", mean), pretrained.get("std", std)
    where = str(weights)
    notes: list[str] = []
    state = timm_to_mimkit(read_tensor_file(weights), where, args.get("img_size"))
    model = infer_model_config(state, args, where, notes)
    if len(mean) != model.in_chans:
        mean, std = None, None
    return ImportedModel(state, model, "timm", str(path), False, mean, std, notes)


def write_timm(
    state: dict[str, torch.Tensor], cfg: ModelConfig, out: Path, mean: list[float], std: list[float]
) -> Path:
    """Write timm's Hub layout: model.safetensors (encoder) + config.json."""
    if cfg.layer_norm_eps != TIMM_EPS:
        log.warning(
            "layer-norm eps is %g but timm's ViT uses %g: outputs in timm will differ slightly",
            cfg.layer_norm_eps,
            TIMM_EPS,
        )
    # mimkit's avg: the final norm on all tokens, then the mean of the patch tokens
    avg = cfg.pool == "avg"
    pool = {"global_pool": "avg", "fc_norm": False} if avg else {"global_pool": "token"}
    out.mkdir(parents=True, exist_ok=True)
    save_file(mimkit_to_timm(state), out / WEIGHTS, metadata={"format": "pt"})
    h, w = cfg.image_hw
    c = cfg.in_chans
    config = {
        "architecture": _TIMM_ARCH.get(cfg.preset, "vit_base_patch16_224"),
        "num_classes": 0,
        "num_features": cfg.embed_dim,
        "global_pool": pool["global_pool"],
        "model_args": {
            "img_size": h if h == w else [h, w],
            "patch_size": cfg.patch_size,
            "in_chans": c,
            "embed_dim": cfg.embed_dim,
            "depth": cfg.depth,
            "num_heads": cfg.num_heads,
            "mlp_ratio": cfg.mlp_ratio,
            "qkv_bias": cfg.qkv_bias,
            "class_token": True,
            **pool,
            "num_classes": 0,
        },
        "pretrained_cfg": {
            "input_size": [c, h, w],
            "mean": list(mean) * c if len(mean) == 1 else list(mean),
            "std": list(std) * c if len(std) == 1 else list(std),
            "num_classes": 0,
        },
    }
    (out / CONFIG_JSON).write_text(json.dumps(config, indent=2))
    return out
