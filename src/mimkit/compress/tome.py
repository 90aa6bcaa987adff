"""Token merging (ToMe; Bolya et al., 2023) at inference, for any mimkit encoder, no training.

After each block's attention, the tokens are split alternately into sets A and B; every A
token finds its most similar B token (cosine similarity of the attention keys, averaged over
heads); the r most similar pairs are merged by a size-weighted average. The encoder's prefix
tokens (its cls token, when it has one) are never merged. Each token carries its `size` (how
many patches it stands for); with proportional attention, log(size) is added to the attention
logits so a merged token weighs as much as the tokens it replaced. Fewer tokens per block
means less compute in every block after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mimkit.bench.flops import encoder_inference_flops
from mimkit.models.config import ModelConfig
from mimkit.models.vit import Attention, Block, VisionTransformer, prefix_token_count

Merge = Callable[[torch.Tensor], torch.Tensor]


def bipartite_soft_matching(metric: torch.Tensor, r: int, protected: int = 1) -> Merge:
    """A function that merges r tokens of any (B, N, C) tensor aligned with `metric` (B, N, K).

    The first `protected` tokens (the encoder's prefix tokens) are never merged, nor merged
    into, and stay first. Returned function sums merged rows; callers divide by merged sizes
    for an average.
    """
    n = metric.shape[1]
    num_a, num_b = (n + 1) // 2, n // 2
    fixed_a, fixed_b = (protected + 1) // 2, protected // 2  # prefix tokens alternate A, B
    r = min(r, num_a - fixed_a, num_b - fixed_b)
    if r <= 0:
        return lambda x: x
    metric = F.normalize(metric.float(), dim=-1)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(1, 2)
    scores[:, :fixed_a, :] = -math.inf
    scores[:, :, :fixed_b] = -math.inf
    best, best_b = scores.max(dim=-1)  # (B, |A|)
    order = best.argsort(dim=-1, descending=True)[..., None]
    merged_a = order[:, :r]  # A tokens folded into B
    kept_a = order[:, r:].sort(dim=1).values  # the rest keep their relative order
    target_b = best_b[..., None].gather(1, merged_a)

    def merge(x: torch.Tensor) -> torch.Tensor:
        xa, xb = x[:, ::2], x[:, 1::2]
        c = x.shape[-1]
        keep = xa.gather(1, kept_a.expand(-1, -1, c))
        moved = xa.gather(1, merged_a.expand(-1, -1, c))
        xb = xb.scatter_reduce(1, target_b.expand(-1, -1, c), moved, reduce="sum")
        # the protected tokens are the first of `keep` and of `xb`, untouched: put them back first
        rest = [keep[:, fixed_a:], xb[:, fixed_b:]]
        return torch.cat([x[:, :protected], *rest], dim=1)

    return merge


def merge_weighted(
    merge: Merge, x: torch.Tensor, size: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge tokens as size-weighted averages; sizes add up."""
    total = merge(x * size)
    size = merge(size)
    return total / size, size


def attention_with_keys(
    attn: Attention, x: torch.Tensor, size: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's attention output and its keys averaged over heads (the matching metric)."""
    b, n, _ = x.shape
    q, k, v = attn.qkv(x).view(b, n, 3, attn.num_heads, attn.head_dim).unbind(2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    bias = None if size is None else size.log().transpose(1, 2)[:, None].to(q.dtype)  # (B,1,1,N)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return attn.proj(out.transpose(1, 2).reshape(b, n, -1)), k.mean(dim=1)


def block_with_merging(
    block: Block,
    x: torch.Tensor,
    size: torch.Tensor,
    r: int,
    proportional: bool,
    protected: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One block with r tokens merged after its attention; the first `protected` never are."""
    y, keys = attention_with_keys(block.attn, block.norm1(x), size if proportional else None)
    x = x + block.drop_path(y)
    merge = bipartite_soft_matching(keys, r, protected)
    x, size = merge_weighted(merge, x, size)
    x = x + block.drop_path(block.mlp(block.norm2(x)))
    return x, size


def tome_tokens(
    encoder: VisionTransformer,
    images: torch.Tensor,
    r: int | Sequence[int],
    proportional: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised tokens, sizes) after merging r tokens per block, or r[i] after block i;
    r=0 is the plain encoder. Differentiable (fine-tuning with merging); callers that only
    read features run it under `torch.no_grad`."""
    rs = [r] * len(encoder.blocks) if isinstance(r, int) else list(r)
    if len(rs) != len(encoder.blocks):
        raise ValueError(f"a ToMe schedule of {len(rs)} blocks for {len(encoder.blocks)} blocks")
    x = encoder.embed(images)
    size = torch.ones(x.shape[0], x.shape[1], 1, device=x.device, dtype=x.dtype)
    for block, r_i in zip(encoder.blocks, rs, strict=True):
        if r_i > 0:
            x, size = block_with_merging(
                block, x, size, r_i, proportional, encoder.num_prefix_tokens
            )
        else:
            x = block(x)
    return encoder.norm(x), size


def tome_token_counts(patches: int, prefix: int, rs: Sequence[int]) -> tuple[list[int], list[int]]:
    """Tokens (prefix included) each block's attention and MLP see under ToMe with r_i per block
    (bipartite matching merges at most min(|A| - prefix A, |B| - prefix B) tokens)."""
    attn, mlp, n = [], [], patches + prefix
    fixed_a, fixed_b = (prefix + 1) // 2, prefix // 2
    for r in rs:
        attn.append(n)
        n -= max(0, min(r, (n + 1) // 2 - fixed_a, n // 2 - fixed_b))
        mlp.append(n)
    return attn, mlp


def tome_flops(cfg: ModelConfig, rs: Sequence[int]) -> float:
    """Forward FLOPs per image of `cfg`'s encoder with r_i merged after block i's attention
    (`bench.flops.encoder_inference_flops`, the count every compression method uses)."""
    counts = tome_token_counts(cfg.num_patches, prefix_token_count(cfg), rs)
    return encoder_inference_flops(cfg, *counts)


def tome_schedule_for(cfg: ModelConfig, target: float) -> list[int]:
    """ToMe's near-constant schedule (r + 1 in the first blocks, r after) whose FLOPs come
    nearest `target` x the full encoder's: how a FLOPs budget becomes merges per block."""
    full = encoder_inference_flops(cfg)
    best, gap = [0] * cfg.depth, math.inf
    for r in range(cfg.num_patches):
        for first in range(cfg.depth):
            rs = [r + 1] * first + [r] * (cfg.depth - first)
            g = abs(tome_flops(cfg, rs) / full - target)
            if g < gap - 1e-12:
                best, gap = rs, g
    return best


@torch.no_grad()
def tome_features(
    encoder: VisionTransformer,
    images: torch.Tensor,
    r: int | Sequence[int],
    proportional: bool = True,
) -> torch.Tensor:
    """Pooled features as `encoder.features`, with average pooling weighted by token size."""
    if isinstance(r, int) and r == 0:
        return encoder.features(images)
    was_training = encoder.training
    encoder.eval()
    try:
        tokens, size = tome_tokens(encoder, images, r, proportional)
    finally:
        encoder.train(was_training)
    if encoder.cfg.pool == "avg":
        prefix = encoder.num_prefix_tokens
        weights = size[:, prefix:]
        return (tokens[:, prefix:] * weights).sum(1) / weights.sum(1)
    return encoder.pool(tokens)
