"""One-shot block pruning: drop whole transformer blocks, keep everything else as it was.

The pruned model is an ordinary mimkit model with a smaller `depth`, so it loads, trains,
evaluates and exports like any other checkpoint. Which blocks were kept, and why, is written
beside it in `pruning.json`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from mimkit.compress.importance import block_scores, blocks_to_keep
from mimkit.config import RunConfig
from mimkit.errors import ConfigError
from mimkit.models.config import with_blocks
from mimkit.objectives import build_method
from mimkit.objectives.base import MaskedMethod
from mimkit.train.checkpoint import load_model, resolve_checkpoint_dir, save_checkpoint

BLOCK_PREFIX = "encoder.blocks."


def prune_blocks(model: MaskedMethod, keep: list[int]) -> MaskedMethod:
    """A new model holding only encoder blocks `keep` (renumbered 0..len-1), decoder intact."""
    depth = len(model.encoder.blocks)
    if not keep or sorted(set(keep)) != sorted(keep) or not all(0 <= i < depth for i in keep):
        raise ValueError(f"keep must be distinct block indices in [0, {depth}), got {keep}")
    keep = sorted(keep)
    new_index = {old: new for new, old in enumerate(keep)}
    cfg = with_blocks(model.cfg, keep)  # per-block sizes of a structurally pruned model follow
    pruned = build_method(cfg, model.masking, model.settings)
    state = {}
    for name, value in model.state_dict().items():
        if name.startswith(BLOCK_PREFIX):
            old, rest = name[len(BLOCK_PREFIX) :].split(".", 1)
            if int(old) not in new_index:
                continue
            name = f"{BLOCK_PREFIX}{new_index[int(old)]}.{rest}"
        state[name] = value
    pruned.load_state_dict(state, strict=True)
    return pruned.to(next(model.parameters()).device)


def prune_checkpoint(
    source: str | Path,
    out: str | Path,
    method: str,
    keep: int,
    bins: int = 256,
    seed: int = 0,
    oracle: Callable[[MaskedMethod], list[float]] | None = None,
) -> dict:
    """Score blocks with `method`, keep the best `keep`, write a loadable checkpoint at `out`."""
    folder = resolve_checkpoint_dir(source)
    model, cfg = load_model(folder)
    depth = len(model.encoder.blocks)
    if not 1 <= keep <= depth:
        raise ConfigError(f"--keep must be between 1 and the model depth {depth}, got {keep}")
    if method == "oracle":
        if oracle is None:
            raise ConfigError("method 'oracle' needs labelled data to measure each block's effect")
        scores = oracle(model)
    else:
        scores = block_scores(model.encoder.blocks, method, bins=bins, seed=seed)
    kept = blocks_to_keep(scores, keep)
    pruned = prune_blocks(model, kept)
    new_cfg = RunConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    new_cfg.model = pruned.cfg
    out = save_checkpoint(out, pruned, new_cfg)
    record = {
        "source": str(folder),
        "method": method,
        "bins": bins if method == "entropy" else None,
        "seed": seed if method == "random" else None,
        "depth_before": depth,
        "depth_after": keep,
        "scores": scores,
        "kept_blocks": kept,
        "params_before": sum(p.numel() for p in model.encoder.parameters()),
        "params_after": sum(p.numel() for p in pruned.encoder.parameters()),
    }
    (Path(out) / "pruning.json").write_text(json.dumps(record, indent=1))
    return record
