"""DiffRate (Chen et al., ICCV 2023): per-block token pruning and merging rates, learned.

After each block's attention, the patch tokens are sorted by importance (the attention the cls
token pays them, averaged over heads; without a cls token, the attention they receive on
average); the least important are pruned, then the least important of the rest are merged
into their most similar kept token. How many tokens each block keeps after pruning, and after
merging, is a discrete choice; DiffRate makes it differentiable and learns it against a FLOPs
target with the encoder frozen:

- each choice is a softmax over candidate kept counts (N, N-1, ..., 1 patch tokens); the count
  used is the ceiling of its expectation, with a straight-through gradient (`RateChoice`);
- the tokens a choice removes are not dropped while learning but masked out of every later
  attention (and of the pooled feature); the mask is the hard 0/1 mask in the forward pass and
  P(token kept) in the backward pass, so the loss reaches the candidate probabilities;
- the loss is a distance to the frozen model's output plus a FLOPs penalty. DiffRate
  distils classifier logits with labels at hand; a self-supervised encoder has neither, so the
  distance here is 1 - cosine between the pooled features (the features kNN and linear probes
  read) of the compressed and the full encoder, on unlabelled calibration images, plus
  `flops_weight` x (FLOPs / full FLOPs - target)^2;
- the learned counts are ceilings of expectations pushed by a soft penalty, and the blocks'
  choices tend to move together, so the learned schedule can settle a few tokens per block
  from the target (5-10% of the FLOPs on 16-36 patch tokens, even after the default 200
  steps). A final projection (`project_schedule`) moves it one token at a time towards the
  target, at each move the block whose change costs the least calibration distance, until the
  FLOPs are within `tolerance` of it (or no single-token move gets nearer). The paper's
  search meets its target in expectation; this makes the schedule actually used meet it;
- at inference the schedule (kept counts per block) is applied with hard pruning and
  merging, so the sequence really shrinks (`diffrate_features`).

Simplifications against the paper, stated because numbers depend on them: merging folds each
merged token into its most similar kept token by the cosine similarity of the attention keys
(ToMe's metric), as a size-weighted average with ToMe's proportional attention
(`compress.tome.merge_weighted`), without the paper's similarity-scaled sizes; block 0
compresses nothing (as the paper's default); FLOPs are `bench.flops.encoder_inference_flops`
(matrix multiplications of the encoder, patch embedding included).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mimkit.bench.flops import encoder_inference_flops
from mimkit.compress.optin import check_flops_target
from mimkit.compress.tome import Merge, merge_weighted
from mimkit.compress.tradeoff import interleaved_rates
from mimkit.data.transforms import normalize
from mimkit.errors import ConfigError
from mimkit.eval.knn import knn_top1
from mimkit.models.vit import Attention, Block, VisionTransformer
from mimkit.progress import progress_interval


class _CeilSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.ceil(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _MinSTE(torch.autograd.Function):
    """min of its arguments forward; the gradient goes to every argument (as DiffRate's)."""

    @staticmethod
    def forward(ctx, *xs):
        return torch.stack(xs).min()

    @staticmethod
    def backward(ctx, grad):
        return tuple(grad for _ in range(ctx.needs_input_grad.__len__()))


class RateChoice(nn.Module):
    """A differentiable choice of how many patch tokens to keep: a softmax over the candidates
    `patches, patches - granularity, ..., >= 1` (DiffRate's differentiable discrete proxy)."""

    def __init__(self, patches: int, granularity: int = 1) -> None:
        super().__init__()
        self.patches = patches
        self.register_buffer("candidates", torch.arange(patches, 0, -granularity).float())
        self.logits = nn.Parameter(torch.zeros(len(self.candidates)))

    def expected_kept(self) -> torch.Tensor:
        """ceil(E[kept]) forward, d E[kept] backward: the count used, with a gradient."""
        return _CeilSTE.apply(self.candidates @ self.logits.softmax(-1))

    def kept(self) -> int:
        return int(self.expected_kept().item())

    def token_mask(self, kept: int, upto: int) -> torch.Tensor:
        """(patches,) 0 on sorted positions [kept, upto) (removed by this choice), 1 elsewhere
        in the forward pass; its gradient is that of P(position kept) = P(count > position)."""
        prob = self.logits.softmax(-1)
        positions = torch.arange(self.patches, device=prob.device)
        kept_prob = ((positions[:, None] < self.candidates[None, :]) * prob).sum(-1)
        hard = torch.ones_like(kept_prob)
        hard[kept:upto] = 0
        return hard - kept_prob.detach() + kept_prob


@dataclass
class Schedule:
    """Patch tokens kept per block after pruning and after merging (prefix tokens not counted),
    and the resulting counts each block's attention and MLP see."""

    prune_keep: list[int]
    merge_keep: list[int]

    @classmethod
    def from_record(cls, record: dict) -> Schedule:
        """The schedule inside a `learn_schedule` record (or the JSON `mimkit compress
        diffrate` writes)."""
        return cls(list(record["prune_keep"]), list(record["merge_keep"]))

    def tokens(self, patches: int) -> tuple[list[int], list[int]]:
        """(patch tokens each block's attention sees, patch tokens its MLP sees)."""
        attn, mlp, n = [], [], patches
        for p, m in zip(self.prune_keep, self.merge_keep, strict=True):
            attn.append(n)
            n = min(n, p, m)
            mlp.append(n)
        return attn, mlp


def schedule_flops(cfg, schedule: Schedule) -> float:
    """Encoder forward FLOPs on one image with `schedule` applied."""
    prefix = 1 if cfg.cls_token else 0
    attn, mlp = schedule.tokens(cfg.num_patches)
    return encoder_inference_flops(cfg, [prefix + n for n in attn], [prefix + n for n in mlp])


def merge_into_kept(metric: torch.Tensor, start: int, keep: int, end: int) -> Merge:
    """A `Merge` (compress.tome's shape) folding tokens [start + keep, end) into their most
    similar token of [start, start + keep) by cosine of `metric` (B, N, K); returns the first
    `end - (end - start - keep)` tokens: the prefix and the kept ones, sums of what they absorbed."""
    m = F.normalize(metric.float(), dim=-1)
    cut = start + keep
    target = (m[:, cut:end] @ m[:, start:cut].transpose(1, 2)).argmax(-1) + start  # (B, S)

    def merge(x: torch.Tensor) -> torch.Tensor:
        index = target[..., None].expand(-1, -1, x.shape[-1])
        return x[:, :cut].scatter_reduce(1, index, x[:, cut:end], reduce="sum")

    return merge


def _qkv(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, n, _ = x.shape
    q, k, v = attn.qkv(x).view(b, n, 3, attn.num_heads, attn.head_dim).unbind(2)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def _importance(weights: torch.Tensor, prefix: int, alive: int) -> torch.Tensor:
    """(B, alive) importance of the alive patch tokens from (B, heads, Nq, N) attention weights:
    the cls token's attention (prefix models), else the mean attention received."""
    w = weights.mean(1)
    if prefix:
        return w[:, 0, prefix : prefix + alive]
    return w[:, :, prefix : prefix + alive].mean(1)


def _sort_alive(order: torch.Tensor, prefix: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Reorder positions [prefix, prefix + alive) of each (B, N, ...) tensor by `order`."""
    out = []
    for t in tensors:
        alive = order.shape[1]
        idx = order + prefix
        idx = idx.view(*idx.shape, *([1] * (t.ndim - 2))).expand(-1, -1, *t.shape[2:])
        part = t[:, prefix : prefix + alive].gather(1, idx - prefix)
        out.append(torch.cat([t[:, :prefix], part, t[:, prefix + alive :]], dim=1))
    return out


# --- inference with a fixed schedule ---------------------------------------------------------


def block_with_schedule(
    block: Block, x: torch.Tensor, size: torch.Tensor, prune: int, merge: int, prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One block: attention (proportional), then the least important patch tokens pruned to
    `prune` and merged down to `merge`, then the MLP on what is left."""
    attn = block.attn
    b, n, _ = x.shape
    q, k, v = _qkv(attn, block.norm1(x))
    bias = size.log().transpose(1, 2)[:, None].to(q.dtype)  # (B, 1, 1, N)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    x = x + block.drop_path(attn.proj(out.transpose(1, 2).reshape(b, n, -1)))
    alive = n - prefix
    keep_p, keep_m = min(alive, prune), min(alive, prune, merge)
    if keep_m < alive:
        rows = q[:, :, :1] if prefix else q  # only the cls row is needed with a cls token
        logits = rows @ k.transpose(-2, -1) * attn.head_dim**-0.5 + bias
        order = _importance(logits.softmax(-1), prefix, alive).argsort(-1, descending=True)
        x, size, keys = _sort_alive(order, prefix, x, size, k.mean(1))
        x, size, keys = (
            x[:, : prefix + keep_p],
            size[:, : prefix + keep_p],
            keys[:, : prefix + keep_p],
        )
        if keep_m < keep_p:
            x, size = merge_weighted(
                merge_into_kept(keys, prefix, keep_m, prefix + keep_p), x, size
            )
    return x + block.drop_path(block.mlp(block.norm2(x))), size


def diffrate_tokens(
    encoder: VisionTransformer, images: torch.Tensor, schedule: Schedule
) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised tokens, sizes) of `images` with `schedule`'s pruning and merging applied.
    Differentiable (fine-tuning with the schedule); feature readers run it without gradients."""
    x = encoder.embed(images)
    size = torch.ones(x.shape[0], x.shape[1], 1, device=x.device, dtype=x.dtype)
    prefix = encoder.num_prefix_tokens
    for block, p, m in zip(encoder.blocks, schedule.prune_keep, schedule.merge_keep, strict=True):
        x, size = block_with_schedule(block, x, size, p, m, prefix)
    return encoder.norm(x), size


@torch.no_grad()
def diffrate_features(
    encoder: VisionTransformer, images: torch.Tensor, schedule: Schedule
) -> torch.Tensor:
    """Pooled features as `encoder.features`, with average pooling weighted by token size."""
    was_training = encoder.training
    encoder.eval()
    try:
        tokens, size = diffrate_tokens(encoder, images, schedule)
    finally:
        encoder.train(was_training)
    if encoder.cfg.pool == "avg":
        prefix = encoder.num_prefix_tokens
        return (tokens[:, prefix:] * size[:, prefix:]).sum(1) / size[:, prefix:].sum(1)
    return encoder.pool(tokens)


# --- projecting a schedule onto its FLOPs target ----------------------------------------------


def check_tolerance(tolerance: float) -> None:
    if not 0.0 <= tolerance < 1.0:
        raise ConfigError(f"--tolerance: expected a fraction in [0, 1), got {tolerance}")


def floor_schedule(cfg) -> Schedule:
    """The fewest FLOPs a schedule reaches: block 0 keeps all, every later block one token."""
    n = cfg.num_patches
    return Schedule([n] + [1] * (cfg.depth - 1), [n] + [1] * (cfg.depth - 1))


def one_token_fewer(schedule: Schedule, block: int, patches: int) -> Schedule | None:
    """`schedule` with one patch token fewer after `block` (and after the later blocks that keep
    all they are given); the tighter of the block's two rates takes it (merging on a tie)."""
    e = schedule.tokens(patches)[1][block]
    if e <= 1:
        return None
    prune, merge = list(schedule.prune_keep), list(schedule.merge_keep)
    if merge[block] <= prune[block]:
        merge[block] = e - 1
    else:
        prune[block] = e - 1
    return Schedule(prune, merge)


def one_token_more(schedule: Schedule, block: int, patches: int) -> Schedule | None:
    """`schedule` with one patch token more after `block`; None if it keeps all it is given."""
    attn, mlp = schedule.tokens(patches)
    if mlp[block] >= attn[block]:
        return None
    prune, merge = list(schedule.prune_keep), list(schedule.merge_keep)
    prune[block] = max(prune[block], mlp[block] + 1)
    merge[block] = max(merge[block], mlp[block] + 1)
    return Schedule(prune, merge)


def project_schedule(
    cfg,
    schedule: Schedule,
    target: float,
    distance: Callable[[Schedule], float],
    tolerance: float = 0.01,
) -> tuple[Schedule, list[dict]]:
    """Move `schedule` one patch token at a time towards `target` x the encoder's FLOPs until
    within `tolerance` x target. Each move is one of the single-token moves (blocks 1...) that
    bring the FLOPs nearer: one that lands within the tolerance if any, else one that stays on
    the same side of the target (so a coarse move, one that also shrinks the later blocks,
    does not jump past it), else any; among those, the one with the least `distance` (the
    calibration loss of the schedule). Stops early where no move gets nearer (a target below
    the least FLOPs any schedule reaches). Returns the schedule and the moves made."""
    full = encoder_inference_flops(cfg)

    def gap(s: Schedule) -> float:
        return schedule_flops(cfg, s) / full - target

    moves: list[dict] = []
    while abs(gap(schedule)) > tolerance * target:
        step = one_token_fewer if gap(schedule) > 0 else one_token_more
        nearer = {}
        for block in range(1, len(schedule.prune_keep)):
            moved = step(schedule, block, cfg.num_patches)
            if moved is not None and abs(gap(moved)) < abs(gap(schedule)):
                nearer[block] = moved
        within = {b: m for b, m in nearer.items() if abs(gap(m)) <= tolerance * target}
        same_side = {b: m for b, m in nearer.items() if gap(m) * gap(schedule) > 0}
        options = within or same_side or nearer
        if not options:
            break
        scored = {block: distance(s) for block, s in options.items()}
        block = min(scored, key=scored.get)
        schedule = options[block]
        moves.append({
            "block": block,
            "tokens": "fewer" if step is one_token_fewer else "more",
            "flops_fraction": gap(schedule) + target,
            "distance": scored[block],
        })  # fmt: skip
    return schedule, moves


# --- learning the schedule -------------------------------------------------------------------


class DiffRateSearch(nn.Module):
    """A frozen encoder with a prune and a merge `RateChoice` per block (block 0 compresses
    nothing); `forward` returns (pooled features, differentiable encoder FLOPs)."""

    def __init__(self, encoder: VisionTransformer, granularity: int = 1) -> None:
        super().__init__()
        self.encoder = encoder.eval()  # frozen: only the rates are optimised (learn_schedule)
        patches = encoder.cfg.num_patches
        self.prune = nn.ModuleList(RateChoice(patches, granularity) for _ in encoder.blocks)
        self.merge = nn.ModuleList(RateChoice(patches, granularity) for _ in encoder.blocks)

    def rate_parameters(self) -> list[nn.Parameter]:
        return [c.logits for c in (*self.prune[1:], *self.merge[1:])]

    def schedule(self) -> Schedule:
        n = self.encoder.cfg.num_patches
        prune = [n] + [c.kept() for c in self.prune[1:]]
        merge = [n] + [c.kept() for c in self.merge[1:]]
        return Schedule(prune, merge)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc, prefix = self.encoder, self.encoder.num_prefix_tokens
        x = enc.embed(images)
        b, n_all, _ = x.shape
        size = x.new_ones(b, n_all, 1)
        mask = x.new_ones(b, n_all)  # 1 = alive; STE-valued where a rate removed a token
        alive = n_all - prefix
        count = torch.tensor(float(alive), device=x.device)
        attn_tokens, mlp_tokens = [], []
        for i, block in enumerate(enc.blocks):
            attn_tokens.append(count + prefix)
            x, weights, keys = self._attention(block, x, size, mask)
            if i > 0:
                order = _importance(weights, prefix, alive).argsort(-1, descending=True)
                x, size, keys, mask = _sort_alive(order, prefix, x, size, keys, mask)
                x, size, mask, alive = self._compress(i, x, size, mask, keys, alive)
                prune_n, merge_n = self.prune[i].expected_kept(), self.merge[i].expected_kept()
                count = _MinSTE.apply(count, prune_n, merge_n)
            mlp_tokens.append(count + prefix)
            x = x + block.mlp(block.norm2(x))
        flops = encoder_inference_flops(enc.cfg, attn_tokens, mlp_tokens)
        tokens = enc.norm(x)
        if enc.cfg.pool == "avg":
            w = (mask * size.squeeze(-1))[:, prefix:, None]
            return (tokens[:, prefix:] * w).sum(1) / w.sum(1), flops
        return enc.pool(tokens), flops

    def _attention(self, block: Block, x, size, mask):
        """Attention in which masked tokens are invisible as keys (each still sees itself), with
        proportional attention; returns (x + attention output, weights, head-mean keys)."""
        attn = block.attn
        b, n, _ = x.shape
        q, k, v = _qkv(attn, block.norm1(x))
        logits = q @ k.transpose(-2, -1) * attn.head_dim**-0.5 + size.log().transpose(1, 2)[:, None]
        policy = mask[:, None, None, :]
        policy = policy + (1 - policy) * torch.eye(n, device=x.device)
        e = (logits - logits.amax(-1, keepdim=True).detach()).exp() * policy
        weights = (e + 1e-6 / n) / (e.sum(-1, keepdim=True) + 1e-6)
        out = (weights @ v).transpose(1, 2).reshape(b, n, -1)
        return x + attn.proj(out), weights, k.mean(1)

    def _compress(self, i: int, x, size, mask, keys, alive: int):
        """Prune, then merge, the sorted alive tokens; tokens taken out stay in place, masked."""
        prefix = self.encoder.num_prefix_tokens
        patch_mask = mask[:, prefix:]
        keep_p = self.prune[i].kept()
        if keep_p < alive:
            patch_mask = patch_mask * self.prune[i].token_mask(keep_p, alive)
        mid = min(alive, keep_p)
        keep_m = self.merge[i].kept()
        if keep_m < mid:
            merge = merge_into_kept(keys.detach(), prefix, keep_m, prefix + mid)
            head_x, head_size = merge_weighted(merge, x[:, : prefix + mid], size[:, : prefix + mid])
            x = torch.cat([head_x, x[:, prefix + keep_m :]], dim=1)
            size = torch.cat([head_size, size[:, prefix + keep_m :]], dim=1)
            patch_mask = patch_mask * self.merge[i].token_mask(keep_m, mid)
        mask = torch.cat([mask[:, :prefix], patch_mask], dim=1)
        return x, size, mask, min(mid, keep_m)


def learn_schedule(
    encoder: VisionTransformer,
    images: torch.Tensor,
    flops: float,
    steps: int = 200,
    batch: int = 64,
    lr: float = 0.05,
    flops_weight: float = 100.0,
    granularity: int = 1,
    seed: int = 0,
    progress: bool = False,
    tolerance: float = 0.01,
) -> tuple[Schedule, dict]:
    """Learn per-block prune and merge counts for `flops` x the encoder's FLOPs on unlabelled
    calibration `images` (normalised, on the encoder's device), the encoder frozen, then
    project them to within `tolerance` x `flops` (`project_schedule`, distance on the first
    `batch` images). Returns the schedule and a record (its FLOPs, the learned schedule before
    the projection and the moves, the loss curve's ends, the time taken)."""
    check_flops_target(flops)
    check_tolerance(tolerance)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    encoder.requires_grad_(False)
    try:
        return _learn(
            encoder, images, flops, steps, batch, lr, flops_weight, granularity, seed, progress,
            tolerance,
        )  # fmt: skip
    finally:
        for p in trainable:  # the caller's encoder is left as it was given
            p.requires_grad_(True)


def _learn(
    encoder, images, flops, steps, batch, lr, flops_weight, granularity, seed, progress, tolerance
):
    start = time.perf_counter()
    search = DiffRateSearch(encoder, granularity).to(images.device)
    full = encoder_inference_flops(encoder.cfg)
    optimizer = torch.optim.Adam(search.rate_parameters(), lr=lr)
    # cosine decay: the counts settle instead of hopping between neighbours of the target
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    targets = torch.cat([encoder.features(x) for x in images.split(batch)])  # the frozen model's
    history = []
    bar = tqdm(
        range(steps),
        desc=f"diffrate: learning rates for {flops:.2f}x FLOPs",
        unit="step",
        disable=not progress,
        mininterval=progress_interval(),
    )
    for _ in bar:
        pick = torch.randperm(len(images), generator=gen)[:batch].to(images.device)
        features, used = search(images[pick])
        distance = 1 - F.cosine_similarity(features, targets[pick], dim=-1).mean()
        penalty = (used / full - flops) ** 2
        loss = distance + flops_weight * penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append((float(distance.detach()), float(used.detach() / full)))
        scheduler.step()
        bar.set_postfix(
            distance=f"{history[-1][0]:.4f}", flops=f"{history[-1][1]:.3f}", refresh=False
        )
    learned = search.schedule()
    probe, wanted = images[:batch], targets[:batch]

    def distance(s: Schedule) -> float:
        got = diffrate_features(encoder, probe, s)
        return float(1 - F.cosine_similarity(got, wanted, dim=-1).mean())

    schedule, moves = project_schedule(encoder.cfg, learned, flops, distance, tolerance)
    record = {
        "flops_target": flops,
        "flops_full": full,
        "flops_schedule": schedule_flops(encoder.cfg, schedule),
        "learned": {
            **asdict(learned),
            "flops_fraction": schedule_flops(encoder.cfg, learned) / full,
        },
        "projection": {"tolerance": tolerance, "moves": moves},
        "flops_floor_fraction": schedule_flops(encoder.cfg, floor_schedule(encoder.cfg)) / full,
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "flops_weight": flops_weight,
        "calibration_images": len(images),
        "seed": seed,
        "distance_first_last": [history[0][0], history[-1][0]] if history else None,
        "seconds": round(time.perf_counter() - start, 1),
        **asdict(schedule),
    }
    record["flops_fraction"] = record["flops_schedule"] / full
    record["within_tolerance"] = abs(record["flops_fraction"] - flops) <= tolerance * flops
    return schedule, record


# --- what a schedule costs and gives ---------------------------------------------------------


@torch.no_grad()
def _all_features(
    fn: Callable, images: torch.Tensor, mean, std, batch: int, device
) -> torch.Tensor:
    return torch.cat(
        [
            fn(normalize(images[i : i + batch].to(device), mean, std)).float().cpu()
            for i in range(0, len(images), batch)
        ]
    )


def diffrate_report(
    encoder: VisionTransformer,
    schedule: Schedule,
    splits: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    mean: list[float],
    std: list[float],
    device: torch.device | str = "cpu",
    batch: int = 256,
    rounds: int = 10,
) -> dict:
    """kNN top-1 of the full encoder and of `schedule` on `splits` (uint8 train/test images and
    labels), and their images/s timed interleaved on one test batch (medians of `rounds`)."""
    encoder = encoder.to(device).eval()
    x_train, y_train, x_test, y_test = splits
    fns = {
        "full": encoder.features,
        "diffrate": lambda x: diffrate_features(encoder, x, schedule),
    }
    top1 = {}
    for name, fn in fns.items():
        f_train = _all_features(fn, x_train, mean, std, batch, device)
        f_test = _all_features(fn, x_test, mean, std, batch, device)
        top1[name] = knn_top1(f_train, y_train, f_test, y_test)
    rates = interleaved_rates(fns, normalize(x_test[:batch].to(device), mean, std), rounds)
    return {
        "knn_top1_full": top1["full"],
        "knn_top1": top1["diffrate"],
        "img_per_s_full": round(rates["full"], 1),
        "img_per_s": round(rates["diffrate"], 1),
        "speedup": round(rates["diffrate"] / rates["full"], 3),
        "timed_batch": min(batch, len(x_test)),
    }
