"""Token reductions as forward passes to fine-tune with (`eval.finetune.TokenReduction`).

ToMe, DiffRate and IA-RED² change which tokens each block sees, so a model fine-tuned after
them should be trained as it will run: ToMe's and DiffRate's papers fine-tune with merging or
their learned rates in place, IA-RED² fine-tunes the backbone under its policy. Here each
reduction is fixed (a merge schedule, a DiffRate schedule, a trained policy with its keep
counts) and only the encoder and head learn. IA-RED²'s policy stays frozen, where the paper
alternates policy and backbone updates: said in its record.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from mimkit.compress.diffrate import Schedule, diffrate_tokens
from mimkit.compress.iared2 import (
    RandomTokenPolicy,
    TokenPolicy,
    check_counts,
    iared2_tokens,
    load_policy,
)
from mimkit.compress.tome import tome_schedule_for, tome_tokens
from mimkit.errors import CheckpointError, ConfigError
from mimkit.eval.finetune import TokenReduction
from mimkit.models.config import ModelConfig


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


def reduction_for(
    cfg: ModelConfig,
    tome_r: int | None = None,
    tome_flops: float | None = None,
    diffrate: str | Path | None = None,
    iared2: str | Path | None = None,
) -> TokenReduction | None:
    """The reduction `mimkit eval finetune` is asked for (at most one), for an encoder of
    `cfg`: ToMe at r per block or at a FLOPs fraction, a DiffRate schedule JSON (`mimkit
    compress diffrate --out`), an IA-RED² policy folder (`mimkit compress iared2 --out`, at the
    counts it was trained for)."""
    given = [x is not None for x in (tome_r, tome_flops, diffrate, iared2)]
    if sum(given) > 1:
        raise ConfigError(
            "one token reduction at a time: --tome-r, --tome-flops, --diffrate or --iared2"
        )
    if tome_r is not None:
        if tome_r < 0:
            raise ConfigError(f"--tome-r: expected r >= 0 tokens merged per block, got {tome_r}")
        return tome_reduction([tome_r] * cfg.depth)
    if tome_flops is not None:
        if not 0.0 < tome_flops <= 1.0:
            raise ConfigError(f"--tome-flops: expected a fraction in (0, 1], got {tome_flops}")
        return tome_reduction(tome_schedule_for(cfg, tome_flops))
    if diffrate is not None:
        schedule = _read_schedule(Path(diffrate))
        if len(schedule.prune_keep) != cfg.depth:
            raise ConfigError(
                f"{diffrate}: a schedule of {len(schedule.prune_keep)} blocks, the encoder has "
                f"{cfg.depth}"
            )
        return diffrate_reduction(schedule)
    if iared2 is not None:
        policy, record = load_policy(iared2)
        if "counts" not in record:
            raise CheckpointError(f"{Path(iared2) / 'iared2.json'}: no 'counts' to keep")
        return iared2_reduction(policy, record["counts"], cfg.num_patches)
    return None


def _read_schedule(path: Path) -> Schedule:
    try:
        return Schedule.from_record(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: not a DiffRate schedule with prune_keep and merge_keep ({exc})"
        ) from None
