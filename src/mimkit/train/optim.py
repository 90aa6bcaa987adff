"""Optimiser pieces of the MAE recipe: parameter groups, learning-rate scaling and schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from mimkit.models.vit import layer_id_of


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that `model`'s modules exclude from weight decay.

    Every module that defines timm's `no_weight_decay()` (the encoder: its cls token; a decoder:
    its mask token) is asked, wherever it sits in the model.
    """
    names = set()
    for prefix, module in model.named_modules():
        own = getattr(module, "no_weight_decay", None)
        if callable(own):
            names |= {f"{prefix}.{name}" if prefix else name for name in own()}
    return names


def decays(name: str, param: nn.Parameter, exempt: set[str]) -> bool:
    """Matrices decay; biases, norms and other 1-D parameters and the `exempt` names do not."""
    return not (param.ndim <= 1 or name.endswith(".bias") or name in exempt)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: parameters that decay (matrices) and those that do not (see `decays`)."""
    exempt = no_weight_decay_names(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if decays(name, param, exempt) else no_decay).append(param)
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
    """Depth of a parameter for layer-wise decay when only its name is known: the name is read
    as the ViT encoder's own (`encoder.` prefix or none), anything else is at the top."""
    return layer_id_of(name.removeprefix("encoder."), num_blocks)


def encoders_with_layer_ids(model: nn.Module) -> dict[str, nn.Module]:
    """Module name -> module, for each module of `model` that numbers its own layers."""
    return {
        prefix: module
        for prefix, module in model.named_modules()
        if callable(getattr(module, "layer_id", None))
    }


def layer_decay_param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float, num_blocks: int | None = None
) -> list[dict]:
    """Param groups with `lr_scale = layer_decay ** (num_blocks + 1 - layer_id)` (BEiT/MAE).

    The encoder (the module of `model` that defines `layer_id`) numbers its parameters; all
    others (the head) are at the top, `num_blocks + 1`, and train at the full rate, each block
    below at `layer_decay` times the one above. `num_blocks` is the encoder's depth, read from
    it when not given. Weight decay is split as in `param_groups`; `set_lr` applies the scales.
    """
    encoders = encoders_with_layer_ids(model)
    if len(encoders) != 1:
        raise ValueError(f"layer decay needs one encoder with layer ids, found {sorted(encoders)}")
    where, encoder = next(iter(encoders.items()))
    depth = len(encoder.blocks)
    if num_blocks is not None and num_blocks != depth:
        raise ValueError(f"num_blocks {num_blocks} does not match the encoder's depth {depth}")
    exempt = no_weight_decay_names(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        inside = where == "" or name.startswith(where + ".")
        layer = encoder.layer_id(name.removeprefix(where + ".")) if inside else depth + 1
        no_decay = not decays(name, param, exempt)
        group = groups.setdefault(
            (layer, no_decay),
            {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (depth + 1 - layer),
                "layer_id": layer,
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]
