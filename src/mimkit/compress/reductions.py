"""Token reductions as forward passes to fine-tune with (`eval.finetune.TokenReduction`).

ToMe, DiffRate and IA-RED² change which tokens each block sees, so a model fine-tuned after
them should be trained as it will run: ToMe's and DiffRate's papers fine-tune with merging or
their learned rates in place, IA-RED² fine-tunes the backbone under its policy. Here each
reduction is fixed (a merge schedule, a DiffRate schedule, a trained policy with its keep
counts) and only the encoder and head learn. IA-RED²'s policy stays frozen, where the paper
alternates policy and backbone updates: said in its record.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mimkit.compress.diffrate import Schedule, diffrate_tokens
from mimkit.compress.iared2 import RandomTokenPolicy, TokenPolicy, check_counts, iared2_tokens
from mimkit.compress.tome import tome_tokens
from mimkit.eval.finetune import TokenReduction


def tome_reduction(r_per_block: Sequence[int], proportional: bool = True) -> TokenReduction:
    """ToMe with r_i tokens merged after block i's attention (proportional attention on)."""
    rs = [int(r) for r in r_per_block]
    if any(r < 0 for r in rs):
        raise ValueError(f"ToMe merges r >= 0 tokens per block, got {rs}")
    return TokenReduction(
        lambda encoder, x: tome_tokens(encoder, x, rs, proportional),
        {"method": "tome", "r_per_block": rs, "proportional": proportional},
    )


def diffrate_reduction(schedule: Schedule) -> TokenReduction:
    """DiffRate's per-block prune and merge counts, fixed."""
    return TokenReduction(
        lambda encoder, x: diffrate_tokens(encoder, x, schedule),
        {
            "method": "diffrate",
            "prune_keep": list(schedule.prune_keep),
            "merge_keep": list(schedule.merge_keep),
        },
    )


def iared2_reduction(
    policy: TokenPolicy | RandomTokenPolicy, counts: Sequence[int], num_patches: int
) -> TokenReduction:
    """IA-RED²'s hard token dropping with a frozen policy and fixed keep counts per stage.

    The policy is frozen and kept out of the classifier (nothing of it is trained or saved);
    every image keeps `counts[s]` patch tokens from stage s on, the ones the policy rates
    highest (or, for the random control, drawn at random).
    """
    counts = [int(c) for c in counts]
    check_counts(counts, len(policy.stage_starts), num_patches)
    frozen = policy.eval().requires_grad_(False) if isinstance(policy, nn.Module) else policy

    def tokens(encoder, x):
        out, _ = iared2_tokens(encoder, frozen.to(x.device), x, counts)
        return out, None  # every kept token stands for one patch

    kind = "random tokens" if isinstance(policy, RandomTokenPolicy) else "learned policy, frozen"
    return TokenReduction(
        tokens,
        {
            "method": "iared2",
            "policy": kind,
            "stage_starts": list(policy.stage_starts),
            "counts": counts,
        },
    )
