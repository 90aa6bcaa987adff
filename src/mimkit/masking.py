"""Masking strategies. A mask is data: a function of (batch, grid, generator) -> index tensors.

Every strategy returns a `Mask` with a fixed number of kept tokens per sample, so batches stay
rectangular and the encoder runs on `ids_keep` alone. The same generator seed gives the same
mask; nothing here reads global random state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Mask:
    """Which patch tokens a sample keeps; all index tensors are (B, ·) int64 on one device."""

    ids_keep: torch.Tensor  # (B, K) visible patches, in shuffled order
    ids_masked: torch.Tensor  # (B, N-K) hidden patches
    ids_restore: torch.Tensor  # (B, N) puts [kept, masked] tokens back in patch order

    @property
    def num_patches(self) -> int:
        return self.ids_restore.shape[1]

    @property
    def binary(self) -> torch.Tensor:
        """(B, N) float, 1 where the patch is hidden (the MAE/HF convention)."""
        b, n = self.ids_restore.shape
        mask = torch.ones(b, n, device=self.ids_restore.device)
        mask[:, : self.ids_keep.shape[1]] = 0
        return torch.gather(mask, 1, self.ids_restore)


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Tokens kept at a ratio, as MAE counts them: int(N * (1 - ratio))."""
    return int(num_patches * (1 - mask_ratio))


def mask_keeping_lowest(priority: torch.Tensor, keep: int) -> Mask:
    """Keep exactly `keep` patches per sample: those with the lowest priority (B, N)."""
    ids_shuffle = torch.argsort(priority, dim=1)
    return Mask(
        ids_keep=ids_shuffle[:, :keep],
        ids_masked=ids_shuffle[:, keep:],
        ids_restore=torch.argsort(ids_shuffle, dim=1),
    )


def mask_from_noise(noise: torch.Tensor, mask_ratio: float) -> Mask:
    """Keep the lowest-noise tokens: MAE's argsort trick, counted as MAE counts."""
    return mask_keeping_lowest(noise, num_kept(noise.shape[1], mask_ratio))


def random_masking(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Mask:
    """MAE's per-sample uniform random masking."""
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    return mask_from_noise(noise, mask_ratio)
