"""What a mask is, and the small pure functions every strategy builds it from.

A mask is data: a `Mask` of index tensors with a fixed number of kept tokens per sample, so
batches stay rectangular and the encoder runs on `ids_keep` alone. Strategies express which
patches to hide as a per-patch priority and keep the lowest (`mask_keeping_lowest`, MAE's
argsort trick, one call deep); nothing here reads global random state.
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
    # (B, N) float: 0 for patches no loss may be taken on (GeoTIFF nodata), else 1; None: all
    loss_weight: torch.Tensor | None = None

    @property
    def num_patches(self) -> int:
        return self.ids_restore.shape[1]

    def select(self, rows: slice | torch.Tensor) -> Mask:
        """The masks of some samples (a rank's share of a global-batch draw)."""
        weight = None if self.loss_weight is None else self.loss_weight[rows]
        return Mask(self.ids_keep[rows], self.ids_masked[rows], self.ids_restore[rows], weight)

    @property
    def hidden_weight(self) -> torch.Tensor:
        """(B, N): `binary`, with the patches left out of the loss (`loss_weight` 0) at 0."""
        return self.binary if self.loss_weight is None else self.binary * self.loss_weight

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


def take_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D) at positions ids (B, M) -> (B, M, D)."""
    return torch.gather(tokens, 1, ids[..., None].expand(-1, -1, tokens.shape[-1]))
