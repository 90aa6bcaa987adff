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

    def select(self, rows: slice | torch.Tensor) -> Mask:
        """The masks of some samples (a rank's share of a global-batch draw)."""
        return Mask(self.ids_keep[rows], self.ids_masked[rows], self.ids_restore[rows])

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


def mask_from_bool(hidden: torch.Tensor) -> Mask:
    """A `Mask` from a (B, N) boolean tensor (True = hidden), as HF's `bool_masked_pos`.

    Every row must hide the same number of patches; kept and hidden ids are in patch order.
    """
    counts = hidden.sum(dim=1)
    if hidden.ndim != 2 or bool((counts != counts[0]).any()):
        raise ValueError("bool mask must be (B, N) with the same number of hidden patches per row")
    ids_shuffle = torch.argsort(hidden.to(torch.int8), dim=1, stable=True)
    keep = hidden.shape[1] - int(counts[0])
    return Mask(
        ids_keep=ids_shuffle[:, :keep],
        ids_masked=ids_shuffle[:, keep:],
        ids_restore=torch.argsort(ids_shuffle, dim=1),
    )


def tube_masking(
    batch: int,
    grid: tuple[int, int, int],
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Mask:
    """VideoMAE's tube masking: one random spatial mask per sample, the same at every time step.

    The kept count is int(H*W * (1 - ratio)) spatial positions times T, so the ratio is exact
    per frame and no patch can be copied from its neighbour in time.
    """
    t, h, w = grid
    noise = torch.rand(batch, h * w, device=device, generator=generator)
    keep = num_kept(h * w, mask_ratio)
    spatial_hidden = torch.ones(batch, h * w, dtype=torch.bool, device=device)
    spatial_hidden.scatter_(1, torch.argsort(noise, dim=1)[:, :keep], False)
    return mask_from_bool(spatial_hidden.repeat(1, t))


def running_cell_keep(
    batch: int,
    grid: tuple[int, int, int],
    mask_ratio: float = 0.5,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """VideoMAE V2's running-cell decoder mask: (B, T*H*W) bool, True where the decoder predicts.

    Each 2x2 spatial cell hides int(4 * ratio) of its four positions; the pattern is a cyclic
    queue that advances by one every time step, from a random start per sample, so over time
    every position is reconstructed while each step predicts only (1 - ratio) of the tokens.
    """
    t, h, w = grid
    if h % 2 or w % 2:
        raise ValueError(f"running-cell masking needs an even spatial grid, got {h}x{w}")
    hidden_per_cell = int(4 * mask_ratio)
    if not 0 < hidden_per_cell < 4:
        raise ValueError(
            f"running-cell mask ratio must hide 1 to 3 of 4 cell positions, got {mask_ratio}"
        )
    queue = torch.tensor([1] * hidden_per_cell + [0] * (4 - hidden_per_cell), device=device)
    start = torch.randint(0, 4, (batch,), device=device, generator=generator)
    step = torch.arange(1, t + 1, device=device)
    slot = torch.arange(4, device=device)
    # cell pattern per (sample, time): queue[(slot + ptr) % 4] with ptr = start + step
    ptr = start[:, None, None] + step[None, :, None] + slot[None, None, :]
    cell = queue[ptr % 4].view(batch, t, 2, 2).bool()
    hidden = cell.repeat(1, 1, h // 2, w // 2)  # tile the 2x2 cell over the grid
    return ~hidden.reshape(batch, t * h * w)
