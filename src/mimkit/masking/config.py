"""The masking section of a run config: which strategy, how much, and the strategy's options."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimkit.errors import ConfigError
from mimkit.masking.core import Mask
from mimkit.masking.table import ANY_GRID, STRATEGIES, draw


@dataclass
class MaskingConfig:
    strategy: str = "random"  # random (MAE) | tube (VideoMAE clips) | any name in STRATEGIES
    ratio: float = (
        0.75  # share of patches hidden, counted as MAE counts (int(N * (1 - ratio)) kept)
    )
    mask_patch: int = 2  # coarse (SimMIM): model patches per mask-patch side

    def check(self, grid: tuple[int, ...]) -> None:
        """Refuse settings that cannot work on this patch grid, naming the field."""
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"masking.strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}"
            )
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"masking.ratio must be in [0, 1), got {self.ratio}")
        if self.strategy not in ANY_GRID and len(grid) != 2:
            raise ConfigError(
                f"masking.strategy {self.strategy!r} is for 2-D images; clips use 'tube'"
            )
        if self.strategy == "tube" and len(grid) != 3:
            raise ConfigError(
                "masking.strategy 'tube' needs clips: a 3-entry model.img_size [T, H, W]"
            )
        if self.strategy == "coarse":
            gh, gw = grid
            if self.mask_patch < 1 or gh % self.mask_patch or gw % self.mask_patch:
                raise ConfigError(
                    f"masking.mask_patch {self.mask_patch} must divide the patch grid {gh}x{gw} "
                    "for masking 'coarse'"
                )

    def options(self) -> dict:
        return {"mask_patch": self.mask_patch} if self.strategy == "coarse" else {}

    def draw(
        self,
        batch: int,
        grid: tuple[int, ...],
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> Mask:
        """This config's mask for a batch on `grid`, seeded by `generator`."""
        return draw(self.strategy, batch, grid, self.ratio, device, generator, **self.options())
