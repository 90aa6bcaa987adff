"""Optimiser pieces of the MAE recipe: parameter groups, learning-rate scaling and schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_NAMES = ("cls_token", "pos_embed", "mask_token", "dist_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices decay; norms, biases, embeddings' tokens and 1-D params do not."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in NO_DECAY_NAMES:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def scaled_lr(base_lr: float, effective_batch: int) -> float:
    """The linear scaling rule of MAE/Goyal et al.: lr = base_lr * effective batch / 256."""
    return base_lr * effective_batch / 256


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float = 0.0) -> float:
    """Linear warmup from 0 to `peak`, then half-cosine down to `floor`, per optimiser step."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def vit_layer_id(name: str, num_blocks: int) -> int:
    """Depth of a ViT parameter for layer-wise decay: embeddings 0, block i -> i+1, the rest top.

    Names are relative to the encoder or prefixed with `encoder.` (timm's names either way).
    """
    name = name.removeprefix("encoder.")
    if name.startswith(("patch_embed", "cls_token", "pos_embed", "mask_token", "dist_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_blocks + 1


def layer_decay_param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float, num_blocks: int
) -> list[dict]:
    """Param groups with `lr_scale = layer_decay ** (num_blocks + 1 - layer_id)` (BEiT/MAE).

    The head and final norm train at the full rate, each block below at `layer_decay` times the
    one above; weight decay is split as in `param_groups`. `set_lr` applies the scales.
    """
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = (
            param.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in NO_DECAY_NAMES
        )
        layer = vit_layer_id(name, num_blocks)
        group = groups.setdefault(
            (layer, no_decay),
            {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (num_blocks + 1 - layer),
                "layer_id": layer,
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]
