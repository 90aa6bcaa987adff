"""Small random models shared by the interop tests."""

from __future__ import annotations

import torch
from conftest import tiny_method_parts, tiny_model_config  # noqa: F401 - re-exported for the interop tests

from mimkit.config import RunConfig
from mimkit.objectives.mae import build_mae
from mimkit.train.checkpoint import save_checkpoint


def randomise_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and buffer random values, so a wrong mapping cannot go unnoticed
    (fresh inits have zero biases, unit norms and tables that coincide between formats)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.is_floating_point():
                scale = 0.05 if tensor.dim() > 1 else 0.2
                tensor.copy_(torch.randn(tensor.shape, generator=g) * scale + (tensor.dim() == 1))
    return module


def random_checkpoint(folder, seed: int = 0, **kw):
    """A saved mimkit checkpoint with random weights; returns (model, RunConfig)."""
    model_cfg, masking, settings = tiny_method_parts(**kw)
    cfg = RunConfig(model=model_cfg, masking=masking, method=settings)
    torch.manual_seed(seed)
    model = randomise_(build_mae(model_cfg, masking, settings), seed).eval()
    save_checkpoint(folder, model, cfg)
    return model, cfg
