"""OPTIN-style one-shot structured pruning: remove attention heads and MLP units, no retraining.

OPTIN (Khaki and Plataniotis, ICLR 2024, "The Need for Speed: Pruning Transformers with One
Recipe") scores each prunable component by how much masking it alone disturbs the network's
*trajectory*: the features of every layer after it (intermediate feature distillation), plus the
output. Scores come from one short forward pass per component on a small calibration batch, with
no labels and no gradient step on the weights; the components are then ranked and cut, in one
shot, to a FLOPs budget, and the model is used as it is.

What this module does, and where it differs from the paper (say so when quoting numbers):
- distortion of a mask m: D(m) = sum over blocks i >= the masked block of
  mean_tokens ||n(h_i(m)) - n(h_i)||^2, plus `pooled_weight` x mean_images
  ||n(f(m)) - n(f)||^2, with h_i the output of block i, f the pooled feature the encoder gives
  for kNN and linear probes, and n(.) division by the L2 norm. The paper compares layers by
  manifold distillation (differences of token Gram matrices) and the output by a KL divergence
  of classifier logits; a self-supervised encoder has no logits, so the pooled-feature term
  (1 - cosine, up to a factor 2) stands in for it, and plain squared distances replace the
  Gram matrices so that the neuron estimate below measures the same quantity;
- heads: D exactly, one masked forward per head, from the head's block on;
- MLP units (neurons): one forward per unit is 768 x depth passes on ViT-tiny, too slow on a
  CPU, so D is estimated to second order instead. D has its minimum, 0, at the unmasked model,
  so D(1 - e_j) ~ ||J e_j||^2 (Gauss-Newton, J the Jacobian of the stacked normalised features
  over the unit gates), and ||J e_j||^2 = E_v[(v^T J e_j)^2] for v ~ N(0, I): `probes`
  backward passes of a random projection of the features give every unit's estimate at once;
- allocation as OPTIN: heads and units each in their ranking, and for every number of kept heads
  the remaining budget filled with the best units; the split with the largest kept importance
  wins. Each block keeps at least its best head and best unit (a block with no heads or no MLP
  is not a shape mimkit's blocks take);
- FLOPs are the encoder's forward FLOPs on a whole image (`encoder_inference_flops`), the
  budget a fraction of the unpruned encoder's.

The pruned model is written with its heads and units really removed: per-block head counts and
MLP widths go into the model config (`model.block_heads`, `model.block_mlp_hidden`), so the
checkpoint loads through `train.checkpoint.load_model` like any other, without the original.
`masked_model` gives the same network as zero masks on the original (for checking).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mimkit.bench.flops import encoder_inference_flops, vit_block_flops
from mimkit.config import RunConfig
from mimkit.errors import ConfigError
from mimkit.models.vit import Block, VisionTransformer
from mimkit.objectives import build_method
from mimkit.objectives.base import MaskedMethod
from mimkit.progress import progress_interval
from mimkit.train.checkpoint import load_model, resolve_checkpoint_dir, save_checkpoint

BLOCK_PREFIX = "encoder.blocks."


@dataclass
class StructuredPlan:
    """What survives pruning: kept head indices and kept MLP unit indices, per block, sorted."""

    heads: list[list[int]]
    units: list[list[int]]

    def heads_per_block(self) -> list[int]:
        return [len(h) for h in self.heads]

    def mlp_hidden_per_block(self) -> list[int]:
        return [len(u) for u in self.units]


def check_flops_target(flops: float, what: str = "--flops") -> None:
    if not (isinstance(flops, (int, float)) and 0.0 < flops <= 1.0 and math.isfinite(flops)):
        raise ConfigError(
            f"{what}: expected a fraction of the encoder's FLOPs in (0, 1], got {flops}"
        )


# --- the gated forward: the encoder with multiplicative head and unit gates -------------------


def gated_block(
    block: Block,
    x: torch.Tensor,
    head_gate: torch.Tensor | None = None,
    unit_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """`block(x)` with each head's output scaled by `head_gate` (heads,) and each MLP unit's
    activation by `unit_gate` (hidden,); a gate of 0 is that component removed."""
    attn = block.attn
    b, n, _ = x.shape
    q, k, v = attn.qkv(block.norm1(x)).view(b, n, 3, attn.num_heads, attn.head_dim).unbind(2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    if head_gate is not None:
        out = out * head_gate.view(1, -1, 1, 1)
    x = x + attn.proj(out.transpose(1, 2).reshape(b, n, -1))
    hidden = block.mlp.act(block.mlp.fc1(block.norm2(x)))
    if unit_gate is not None:
        hidden = hidden * unit_gate
    return x + block.mlp.fc2(hidden)


def trajectory(
    encoder: VisionTransformer,
    start: int,
    h: torch.Tensor,
    head_gates: dict[int, torch.Tensor] | None = None,
    unit_gates: dict[int, torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """From input `h` of block `start` on: (normalised output tokens of each block from `start`,
    normalised pooled feature)."""
    head_gates, unit_gates = head_gates or {}, unit_gates or {}
    outs = []
    for i in range(start, len(encoder.blocks)):
        h = gated_block(encoder.blocks[i], h, head_gates.get(i), unit_gates.get(i))
        outs.append(F.normalize(h, dim=-1))
    return outs, F.normalize(encoder.pool(encoder.norm(h)), dim=-1)


def distortion(
    base: tuple[list[torch.Tensor], torch.Tensor],
    other: tuple[list[torch.Tensor], torch.Tensor],
    pooled_weight: float = 1.0,
) -> float:
    """D: summed per-token squared distances of the normalised block outputs `other` holds
    (the last len(other) of `base`), plus `pooled_weight` x the pooled features' distance."""
    (base_blocks, base_pool), (blocks, pool) = base, other
    base_blocks = base_blocks[len(base_blocks) - len(blocks) :]
    layers = sum((a - b).pow(2).sum(-1).mean() for a, b in zip(blocks, base_blocks, strict=True))
    pooled = (pool - base_pool).pow(2).sum(-1).mean()
    return float((layers + pooled_weight * pooled).detach())


@torch.no_grad()
def block_inputs(encoder: VisionTransformer, images: torch.Tensor) -> list[torch.Tensor]:
    """The input of every block on `images` (normalised float (B, C, H, W)), unmasked."""
    h, inputs = encoder.embed(images), []
    for block in encoder.blocks:
        inputs.append(h)
        h = block(h)
    return inputs


@torch.no_grad()
def head_importance(
    encoder: VisionTransformer,
    images: torch.Tensor,
    pooled_weight: float = 1.0,
    progress: bool = False,
) -> list[torch.Tensor]:
    """Per block, (heads,) distortion D when that head alone is masked (exact, one pass each)."""
    inputs = block_inputs(encoder, images)
    base = trajectory(encoder, 0, inputs[0])
    scores = []
    blocks = tqdm(
        range(len(encoder.blocks)),
        desc="optin: heads",
        unit="block",
        disable=not progress,
        mininterval=progress_interval(),
    )
    for i in blocks:
        heads = encoder.blocks[i].attn.num_heads
        row = torch.zeros(heads, dtype=torch.float64)
        for h in range(heads):
            gate = torch.ones(heads, device=images.device)
            gate[h] = 0
            row[h] = distortion(base, trajectory(encoder, i, inputs[i], {i: gate}), pooled_weight)
        scores.append(row)
    return scores


def unit_importance(
    encoder: VisionTransformer,
    images: torch.Tensor,
    probes: int = 32,
    pooled_weight: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    chunk: int = 16,
) -> list[torch.Tensor]:
    """Per block, (hidden,) Gauss-Newton estimate of D when that MLP unit alone is masked:
    the mean over `probes` random projections v of (d v.f / d gate_j)^2, f the stacked
    normalised features D compares (block outputs scaled by 1/sqrt(tokens), pooled feature by
    sqrt(pooled_weight / images)). Probes run `chunk` at a time, batched."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    gates = {
        i: torch.ones(b.mlp.fc1.out_features, device=images.device, requires_grad=True)
        for i, b in enumerate(encoder.blocks)
    }
    with torch.no_grad():
        h0 = encoder.embed(images)
    with torch.enable_grad():
        blocks, pooled = trajectory(encoder, 0, h0, unit_gates=gates)
        tokens = blocks[0].shape[0] * blocks[0].shape[1]
        stacked = [t / math.sqrt(tokens) for t in blocks]
        stacked.append(pooled * math.sqrt(pooled_weight / pooled.shape[0]))
        sums = [torch.zeros_like(g, dtype=torch.float64) for g in gates.values()]
        chunks = list(range(0, probes, chunk))
        bar = tqdm(
            chunks,
            desc=f"optin: MLP units ({probes} probes)",
            unit="chunk",
            disable=not progress,
            mininterval=progress_interval(),
        )
        for first in bar:
            count = min(chunk, probes - first)
            # a batch of random projections v, one vector-Jacobian product each (vmapped)
            vs = [torch.randn((count, *t.shape), generator=gen).to(t) for t in stacked]
            grads = torch.autograd.grad(
                stacked,
                list(gates.values()),
                grad_outputs=vs,
                retain_graph=first + count < probes,
                is_grads_batched=True,
            )
            for total, g in zip(sums, grads, strict=True):
                total += g.double().pow(2).sum(0)
    return [(total / probes).cpu() for total in sums]


# --- allocation to a FLOPs budget --------------------------------------------------------------


def _ranked(scores: list[torch.Tensor], exclude: list[int]) -> list[tuple[float, int, int]]:
    """(score, block, index) of every component but block i's `exclude[i]`, best first."""
    items = [
        (float(row[j]), i, j)
        for i, row in enumerate(scores)
        for j in range(len(row))
        if j != exclude[i]
    ]
    return sorted(items, key=lambda t: (-t[0], t[1], t[2]))


def plan_to_flops(
    cfg,
    head_scores: list[torch.Tensor],
    unit_scores: list[torch.Tensor],
    flops: float,
) -> StructuredPlan:
    """The kept heads and units of highest importance whose encoder fits `flops` x the unpruned
    encoder's FLOPs (`cfg`: the unpruned model config), chosen as OPTIN does: for every number
    of kept heads, the rest of the budget goes to the best units; the split keeping the most
    importance wins. Each block keeps at least its best head and best unit."""
    check_flops_target(flops)
    n = cfg.num_patches + (1 if cfg.cls_token else 0)
    d, head_dim = cfg.embed_dim, cfg.embed_dim // cfg.num_heads
    head_cost = vit_block_flops(n, n, d, head_dim, 0)
    unit_cost = vit_block_flops(n, n, d, 0, 1)
    full = encoder_inference_flops(cfg)
    budget = flops * full
    mandatory = [
        (int(s.argmax()), int(u.argmax())) for s, u in zip(head_scores, unit_scores, strict=True)
    ]
    floor = 2 * cfg.num_patches * cfg.patch_dim * d + len(mandatory) * (head_cost + unit_cost)
    if floor > budget * (1 + 1e-9):
        raise ConfigError(
            f"--flops {flops}: below the smallest encoder this pruning makes "
            f"({floor / full:.3f} of the FLOPs: one head and one MLP unit per block)"
        )
    heads = _ranked(head_scores, [h for h, _ in mandatory])
    units = _ranked(unit_scores, [u for _, u in mandatory])
    head_value = [0.0] + list(torch.tensor([t[0] for t in heads]).cumsum(0).tolist())
    unit_value = [0.0] + list(torch.tensor([t[0] for t in units]).cumsum(0).tolist())
    best = None
    for nh in range(len(heads) + 1):
        left = budget - floor - nh * head_cost
        if left < -1e-6 * full:
            break
        nu = min(len(units), int(max(left, 0.0) // unit_cost))
        value = head_value[nh] + unit_value[nu]
        if best is None or value > best[0]:
            best = (value, nh, nu)
    _, nh, nu = best
    kept_heads = [{h} for h, _ in mandatory]
    kept_units = [{u} for _, u in mandatory]
    for _, i, h in heads[:nh]:
        kept_heads[i].add(h)
    for _, i, u in units[:nu]:
        kept_units[i].add(u)
    return StructuredPlan([sorted(h) for h in kept_heads], [sorted(u) for u in kept_units])


# --- applying a plan: masks (for checking) and the smaller model ------------------------------


def _qkv_rows(kept: list[int], heads: int, head_dim: int) -> torch.Tensor:
    """Rows of a qkv weight ((3 x heads x head_dim), dim) belonging to the `kept` heads."""
    return torch.tensor(
        [s * heads * head_dim + h * head_dim + j for s in range(3) for h in kept
         for j in range(head_dim)]
    )  # fmt: skip


def _head_columns(kept: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + j for h in kept for j in range(head_dim)])


@torch.no_grad()
def masked_model(model: MaskedMethod, plan: StructuredPlan) -> MaskedMethod:
    """A copy of `model` whose pruned heads and units are zeroed, not removed: the network the
    pruned model must equal (a removed head's projection columns and a removed unit's output
    column are 0)."""
    masked = copy.deepcopy(model)
    for block, heads, units in zip(masked.encoder.blocks, plan.heads, plan.units, strict=True):
        attn = block.attn
        drop_h = [h for h in range(attn.num_heads) if h not in set(heads)]
        if drop_h:
            attn.proj.weight[:, _head_columns(drop_h, attn.head_dim)] = 0
        drop_u = [u for u in range(block.mlp.fc1.out_features) if u not in set(units)]
        if drop_u:
            block.mlp.fc2.weight[:, torch.tensor(drop_u)] = 0
    return masked


def pruned_block_state(block: Block, heads: list[int], units: list[int]) -> dict[str, torch.Tensor]:
    """The state dict of `block` with only heads `heads` and MLP units `units` (block-relative
    names)."""
    attn, state = block.attn, {}
    rows = _qkv_rows(heads, attn.num_heads, attn.head_dim)
    cols = _head_columns(heads, attn.head_dim)
    keep_units = torch.tensor(units)
    for name, value in block.state_dict().items():
        if name.startswith("attn.qkv."):
            value = value[rows.to(value.device)]
        elif name == "attn.proj.weight":
            value = value[:, cols.to(value.device)]
        elif name.startswith("mlp.fc1."):
            value = value[keep_units.to(value.device)]
        elif name == "mlp.fc2.weight":
            value = value[:, keep_units.to(value.device)]
        state[name] = value.clone()
    return state


def prune_structured(model: MaskedMethod, plan: StructuredPlan) -> MaskedMethod:
    """A new model whose encoder holds only the heads and MLP units of `plan`, decoder intact;
    its config records the per-block head counts and MLP widths."""
    blocks = model.encoder.blocks
    if len(plan.heads) != len(blocks) or len(plan.units) != len(blocks):
        raise ValueError(f"plan covers {len(plan.heads)} blocks, the encoder has {len(blocks)}")
    cfg = dataclasses.replace(
        model.cfg,
        block_heads=plan.heads_per_block(),
        block_mlp_hidden=plan.mlp_hidden_per_block(),
    )
    pruned = build_method(cfg, model.masking, model.settings)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(BLOCK_PREFIX)}
    for i, (block, heads, units) in enumerate(zip(blocks, plan.heads, plan.units, strict=True)):
        for name, value in pruned_block_state(block, heads, units).items():
            state[f"{BLOCK_PREFIX}{i}.{name}"] = value
    pruned.load_state_dict(state, strict=True)
    return pruned.to(next(model.parameters()).device).eval()


# --- the whole recipe on a checkpoint ----------------------------------------------------------


def optin_prune(
    model: MaskedMethod,
    images: torch.Tensor,
    flops: float,
    probes: int = 32,
    pooled_weight: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> tuple[MaskedMethod, StructuredPlan, dict]:
    """Score heads and units on calibration `images` (normalised, on the model's device), plan
    to `flops` x the encoder's FLOPs, and return (pruned model, plan, record)."""
    check_flops_target(flops)
    encoder = model.encoder.eval()
    head_scores = head_importance(encoder, images, pooled_weight, progress)
    unit_scores = unit_importance(encoder, images, probes, pooled_weight, seed, progress)
    plan = plan_to_flops(model.cfg, head_scores, unit_scores, flops)
    pruned = prune_structured(model, plan)
    full = encoder_inference_flops(model.cfg)
    after = encoder_inference_flops(pruned.cfg)
    record = {
        "flops_target": flops,
        "flops_full": full,
        "flops_pruned": after,
        "flops_fraction": after / full,
        "heads_before": model.cfg.heads_per_block(),
        "heads_after": plan.heads_per_block(),
        "mlp_hidden_before": model.cfg.mlp_hidden_per_block(),
        "mlp_hidden_after": plan.mlp_hidden_per_block(),
        "kept_heads": plan.heads,
        "kept_units": plan.units,
        "head_scores": [s.tolist() for s in head_scores],
        "unit_score_sums": [float(s.sum()) for s in unit_scores],
        "params_before": sum(p.numel() for p in model.encoder.parameters()),
        "params_after": sum(p.numel() for p in pruned.encoder.parameters()),
        "calibration_images": len(images),
        "probes": probes,
        "pooled_weight": pooled_weight,
        "seed": seed,
    }
    return pruned, plan, record


def optin_checkpoint(
    source: str | Path,
    out: str | Path,
    images: torch.Tensor,
    flops: float,
    probes: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict:
    """Prune the checkpoint at `source` to `flops` with calibration `images` (normalised float,
    any device) and write the smaller checkpoint at `out`, with `optin.json` beside its weights."""
    check_flops_target(flops)
    folder = resolve_checkpoint_dir(source)
    model, cfg = load_model(folder, device)
    pruned, _, record = optin_prune(
        model, images.to(device), flops, probes, seed=seed, progress=progress
    )
    new_cfg = RunConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    new_cfg.model = pruned.cfg
    out = save_checkpoint(out, pruned, new_cfg)
    record = {"source": str(folder), **record}
    (Path(out) / "optin.json").write_text(json.dumps(record, indent=1))
    return record
