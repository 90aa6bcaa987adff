"""Oracle block sensitivity: remove each block in turn and measure what the model loses.

This is the data-dependent reference ranking that data-free scores are judged against. The
probe is weighted kNN on frozen features (fast, no training); a block's score is the top-1 drop
when it alone is removed, so a higher score means a more important block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from mimkit.compress.prune import prune_blocks
from mimkit.eval.knn import knn_evaluate
from mimkit.objectives.base import MaskedMethod


def knn_probe(
    splits: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    mean: list[float],
    std: list[float],
    device: torch.device | str = "cpu",
) -> Callable[[MaskedMethod], float]:
    def probe(model: MaskedMethod) -> float:
        return knn_evaluate(model.encoder, splits, mean, std, device=device, progress=False).top1

    return probe


def oracle_sensitivity(
    model: MaskedMethod, probe: Callable[[MaskedMethod], float], progress: bool = True
) -> tuple[float, list[float]]:
    """(full-model score, per-block drop in score when that block alone is removed)."""
    full = probe(model)
    depth = len(model.encoder.blocks)
    drops = []
    for i in tqdm(range(depth), desc="oracle: remove each block", disable=not progress):
        keep = [j for j in range(depth) if j != i]
        drops.append(full - probe(prune_blocks(model, keep)) if keep else full)
    return full, drops
