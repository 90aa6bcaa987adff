"""The table of masking strategies: every entry has one signature.

    strategy(batch, grid, ratio, device, generator, **options) -> Mask

`grid` is the patch grid ((h, w) for images, (t, h, w) for clips); options are the
strategy's own settings from `MaskingConfig` (only `coarse` has one today: `mask_patch`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from mimkit.masking.core import Mask
from mimkit.masking.spatial import (
    COLORS,
    block_masking,
    coarse_masking,
    colormae_masking,
    gmml_masking,
    grid_masking,
    multiblock_masking,
    random_masking,
)
from mimkit.masking.video import tube_masking

Strategy = Callable[..., Mask]
STRATEGIES: dict[str, Strategy] = {
    "random": random_masking,
    "block": block_masking,
    "coarse": coarse_masking,
    "grid": grid_masking,
    "gmml": gmml_masking,
    "multiblock": multiblock_masking,
    **{f"colormae_{c}": functools.partial(colormae_masking, color=c) for c in COLORS},
    "tube": tube_masking,
}
ANY_GRID = ("random", "tube")  # the others are defined on a 2-D patch grid


def draw(
    strategy: str,
    batch: int,
    grid: tuple[int, ...],
    ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    **options,
) -> Mask:
    """One mask per sample from the named strategy."""
    return STRATEGIES[strategy](batch, grid, ratio, device, generator, **options)
