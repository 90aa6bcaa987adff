"""Masking for clips (B, C, T, H, W): VideoMAE's tube masking and V2's running-cell decoder mask."""

from __future__ import annotations

import torch

from mimkit.masking.core import Mask, mask_from_bool, num_kept


def tube_masking(
    batch: int,
    grid: tuple[int, ...],
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Mask:
    """VideoMAE's tube masking: one random spatial mask per sample, the same at every time step.

    The kept count is int(H*W * (1 - ratio)) spatial positions times T, so the ratio is exact
    per frame and no patch can be copied from its neighbour in time. The leading axes of `grid`
    are time; a 2-D grid is one frame (then this is random masking).
    """
    *time, h, w = grid
    t = 1
    for extent in time:
        t *= extent
    noise = torch.rand(batch, h * w, device=device, generator=generator)
    keep = num_kept(h * w, mask_ratio)
    spatial_hidden = torch.ones(batch, h * w, dtype=torch.bool, device=device)
    spatial_hidden.scatter_(1, torch.argsort(noise, dim=1)[:, :keep], False)
    return mask_from_bool(spatial_hidden.repeat(1, t))


def running_cell_targets(
    batch: int,
    grid: tuple[int, int, int],
    mask_ratio: float = 0.5,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """VideoMAE V2's running-cell decoder mask: (B, T*H*W) bool, True at the positions the
    decoder predicts (its targets).

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
