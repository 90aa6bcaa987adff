"""Data-free block importance: how much each transformer block matters, from its weights alone.

Gardener (Xiang, Wu and Bai, 2026) scores a block by the *weight-number entropy* of its
pretrained weights: pool every scalar weight of the block, split their range into K equal
intervals, count the weights per interval, and take the Shannon entropy of those counts.
Low entropy (weights bunched in few intervals) marks a redundant block, pruned first.

Estimator used here, stated because the number depends on it:
- what is pooled: the block's weight matrices (qkv, attention projection, both MLP layers);
  biases and LayerNorm affine parameters are left out by default (`include_vectors=True`
  adds them);
- K = 256 equal-width bins between the pooled minimum and maximum (`bins`);
- natural logarithm (nats); `aggregate="block"` pools all matrices of a block into one
  histogram (the paper's definition), `aggregate="matrix"` averages per-matrix entropies.

Baselines, all data-free: the L2 norm of the block's weights per weight (`norm`), keeping the
first or last blocks (`first`, `last`), and a seeded random order (`random`).
"""

from __future__ import annotations

import torch
from torch import nn

METHODS = ("entropy", "norm", "first", "last", "random")


def histogram_entropy(values: torch.Tensor, bins: int = 256) -> float:
    """Shannon entropy (nats) of the equal-width histogram of `values` over their range."""
    flat = values.detach().reshape(-1).double().cpu()
    if flat.numel() == 0:
        raise ValueError("entropy of an empty tensor is undefined")
    lo, hi = flat.min().item(), flat.max().item()
    if hi == lo:
        return 0.0
    counts = torch.histc(flat, bins=bins, min=lo, max=hi)
    p = counts[counts > 0] / flat.numel()
    return float(-(p * p.log()).sum())


def block_tensors(block: nn.Module, include_vectors: bool = False) -> list[torch.Tensor]:
    return [p for p in block.parameters() if p.ndim >= 2 or include_vectors]


def block_entropy(
    block: nn.Module, bins: int = 256, aggregate: str = "block", include_vectors: bool = False
) -> float:
    tensors = block_tensors(block, include_vectors)
    if aggregate == "block":
        return histogram_entropy(torch.cat([t.detach().reshape(-1) for t in tensors]), bins)
    if aggregate == "matrix":
        return sum(histogram_entropy(t, bins) for t in tensors) / len(tensors)
    raise ValueError(f"aggregate must be 'block' or 'matrix', got {aggregate!r}")


def block_norm(block: nn.Module) -> float:
    """Root-mean-square of the block's weight matrices: an L2 norm that ignores block width."""
    flat = torch.cat([t.detach().reshape(-1).double() for t in block_tensors(block)])
    return float(flat.pow(2).mean().sqrt())


def block_scores(
    blocks: nn.ModuleList, method: str, bins: int = 256, aggregate: str = "block", seed: int = 0
) -> list[float]:
    """One importance score per block; higher means keep longer."""
    n = len(blocks)
    if method == "entropy":
        return [block_entropy(b, bins, aggregate) for b in blocks]
    if method == "norm":
        return [block_norm(b) for b in blocks]
    if method == "first":  # keep the earliest blocks: prune from the top
        return [float(n - i) for i in range(n)]
    if method == "last":  # keep the latest blocks: prune from the bottom
        return [float(i + 1) for i in range(n)]
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(n, generator=gen, dtype=torch.float64).tolist()
    raise ValueError(f"unknown importance method {method!r}; expected one of {list(METHODS)}")


def blocks_to_keep(scores: list[float], keep: int) -> list[int]:
    """Indices of the `keep` highest-scoring blocks, in their original (depth) order."""
    if not 1 <= keep <= len(scores):
        raise ValueError(f"keep must be between 1 and {len(scores)}, got {keep}")
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:keep])
