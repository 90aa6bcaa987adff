"""Speed options of the training step: torch.compile, activation checkpointing, async copies.

Each is a plain function of the model or tensor, so the loop reads as a list of choices and the
benchmark can apply exactly the same ones.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mimkit.errors import ConfigError


def want_compile(setting: str | bool, device: torch.device) -> bool:
    """`auto` compiles on CUDA (where fusing the ViT's elementwise ops pays) and not on CPU,
    where compile time dwarfs short runs and the tests must stay quick: on the demo (2-core AMD
    EPYC, torch 2.13) compiling made the bf16 step 1.19x faster on a quiet machine for 50 s of
    compiling, about 13 s saved over the demo's 79 s of training; it took 9-16 minutes on a
    loaded one (benchmarks/results/cpu_2026-12-03.md, cpu_2026-12-02_demo_compile.md)."""
    if setting == "auto":
        return device.type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ConfigError(f"train.compile must be auto, true or false; got {setting!r}")


def tune_backends(device: torch.device) -> None:
    """On CUDA, let float32 matmuls outside autocast (loss, norms' neighbours) use TF32."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def checkpoint_blocks(model: nn.Module) -> int:
    """Recompute every transformer block's activations in backward instead of storing them.

    Wraps each block's `forward` in place (non-reentrant checkpointing), so parameter names and
    checkpoints are unchanged. Trades about one extra forward for activation memory that no
    longer grows with depth; for large presets and big batches. Returns the blocks wrapped.
    """
    wrapped = 0
    for module in model.modules():
        blocks = getattr(module, "blocks", None)
        if not isinstance(blocks, nn.ModuleList):
            continue
        for block in blocks:
            if getattr(block, "_mimkit_checkpointed", False):
                continue
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
            block._mimkit_checkpointed = True
            wrapped += 1
    return wrapped


def to_device_async(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a (uint8) batch to the device without blocking the host.

    A non-blocking copy is only asynchronous from pinned memory, so a pageable CUDA-bound batch
    is pinned first (DataLoader workers already pin theirs). On CPU this is a no-op.
    """
    if device.type != "cuda" or images.is_cuda:  # already there (data.decode=gpu): no pinning
        return images.to(device)
    if not images.is_pinned():
        images = images.pin_memory()
    return images.to(device, non_blocking=True)
