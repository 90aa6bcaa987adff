"""IA-RED² (Pan et al., NeurIPS 2021): a learned policy that drops redundant patch tokens.

The encoder's blocks are split into stages (groups of consecutive blocks). Before the first
block of each stage a light *multi-head interpreter* scores every patch token still in the
sequence: each head projects the tokens and a learned policy token with one shared linear
layer, a sigmoid of their scaled dot product is that head's keep probability, and the heads
are averaged. Tokens the policy drops are removed from the sequence (hard dropping), so every
later block runs on fewer tokens; the prefix (cls) token is never dropped.

Training is REINFORCE on a frozen encoder, stage by stage (the paper's curriculum): the
interpreter being trained samples a keep/drop action per token from its probabilities; the
earlier, already trained stages drop their tokens as at inference; later stages keep all. The
reward of one image is the paper's, 1 - (kept / entering)² when the prediction is right and
-tau when it is wrong. "Right" means: a linear head fitted on the *full* encoder's pooled
features (with the data's labels, Fashion-MNIST's for the demo) classifies the pruned
encoder's features as the label says. The reward trades accuracy against tokens kept.

Where this differs from the paper, on purpose:
- the encoder stays frozen (the paper fine-tunes the ViT with the interpreters afterwards): the
  comparison asks what a pretrained encoder keeps without fine-tuning;
- inference keeps a fixed number of tokens per stage, the ones with the highest keep
  probability (the paper keeps every token whose sampled/thresholded action is "keep", a
  count that varies per image): a fixed count gives rectangular batches (real speed on any
  device, no padding) and an exact FLOPs budget, so methods compare at matched FLOPs. The
  paper's rule is here too (`adaptive_tokens`, keep probability > a threshold), batched with
  masked attention (exact outputs, no speed-up): it reports how many tokens, and FLOPs, each
  image keeps (`adaptive_report`);
- the chance control (`RandomTokenPolicy`) keeps the same counts per stage, drawn at random;
- the REINFORCE baseline is the batch's mean reward (variance reduction the paper does not
  spell out);
- labels are required: there is no pseudo-label mode (the head that judges correctness is fit
  on labels).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from mimkit.bench.flops import encoder_inference_flops
from mimkit.data.transforms import normalize
from mimkit.errors import CheckpointError, ConfigError
from mimkit.eval.linear import LinearProbe, ProbeSettings, fit_probe, num_classes_of
from mimkit.masking.core import take_tokens
from mimkit.models.vit import Block, VisionTransformer
from mimkit.progress import progress_interval

POLICY_FILE = "policy.safetensors"
RESULT_FILE = "iared2.json"


class Interpreter(nn.Module):
    """Multi-head interpreter: (B, K, D) patch tokens -> (B, K) keep probabilities."""

    def __init__(self, dim: int, heads: int = 4, head_dim: int = 32) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, heads * head_dim)
        self.policy_token = nn.Parameter(torch.randn(1, dim) * 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, k, _ = tokens.shape
        f = self.proj(self.norm(tokens)).view(b, k, self.heads, self.head_dim)
        p = self.proj(self.norm(self.policy_token)).view(self.heads, self.head_dim)
        logits = torch.einsum("bkhc,hc->bkh", f, p) / math.sqrt(self.head_dim)
        return torch.sigmoid(logits.float()).mean(dim=-1)


@dataclass
class PolicySpec:
    """What a saved policy needs besides its weights: its shape and where it acts."""

    dim: int
    stage_starts: list[int]  # block index before which each interpreter acts
    heads: int = 4
    head_dim: int = 32


class TokenPolicy(nn.Module):
    """One interpreter per stage; `spec.stage_starts[s]` is the first block of stage s."""

    def __init__(self, spec: PolicySpec) -> None:
        super().__init__()
        self.spec = spec
        self.interpreters = nn.ModuleList(
            Interpreter(spec.dim, spec.heads, spec.head_dim) for _ in spec.stage_starts
        )

    @property
    def stage_starts(self) -> list[int]:
        return self.spec.stage_starts

    def choose(self, stage: int, patches: torch.Tensor, count: int) -> torch.Tensor:
        """(B, count) positions, in sequence order, of the patch tokens stage `stage` keeps."""
        return policy_choice(self.interpreters[stage], patches, count)


class RandomTokenPolicy(nn.Module):
    """The chance control of a `TokenPolicy`: the same stages and keep counts, the kept tokens
    drawn uniformly at random, independently of the image (only their number is read).

    One generator, seeded once, serves every call: each image gets its own draw, and the same
    sequence of calls gives the same draws (the draws are made on the CPU, so on any device).
    No interpreter runs: its FLOPs are `iared2_flops(..., heads=0)`.
    """

    def __init__(self, stage_starts: list[int], seed: int = 0) -> None:
        super().__init__()
        self.stage_starts = list(stage_starts)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def choose(self, stage: int, patches: torch.Tensor, count: int) -> torch.Tensor:
        noise = torch.rand(patches.shape[:2], generator=self.generator)
        return noise.topk(count, dim=1).indices.sort(dim=1).values.to(patches.device)


def stage_starts_for(depth: int, stages: int) -> list[int]:
    """First block of each of `stages` near-equal groups of `depth` blocks: 6, 3 -> [0, 2, 4]."""
    if not 1 <= stages <= depth:
        raise ConfigError(f"--stages must be between 1 and the encoder depth {depth}, got {stages}")
    return [round(s * depth / stages) for s in range(stages)]


def keep_counts(num_patches: int, keep: float, stages: int) -> list[int]:
    """Patch tokens kept at each stage when each keeps `keep` of the tokens entering it (>= 1)."""
    if not 0.0 < keep <= 1.0:
        raise ConfigError(f"--keep must be a fraction in (0, 1], got {keep}")
    counts, n = [], num_patches
    for _ in range(stages):
        n = max(1, round(n * keep))
        counts.append(n)
    return counts


def check_counts(counts: list[int], stages: int, num_patches: int) -> None:
    if len(counts) != stages:
        raise ConfigError(f"keep counts: expected one per stage ({stages}), got {counts}")
    if (
        any(c < 1 for c in counts)
        or counts[0] > num_patches
        or any(b > a for a, b in zip(counts, counts[1:], strict=False))
    ):
        raise ConfigError(
            f"keep counts {counts}: expected non-increasing counts in [1, {num_patches}]"
        )


# --- inference: hard dropping -----------------------------------------------------------------


def policy_choice(interpreter: Interpreter, patches: torch.Tensor, count: int) -> torch.Tensor:
    """(B, count) positions, in sequence order, of the `count` most probably kept tokens."""
    return interpreter(patches).topk(count, dim=1).indices.sort(dim=1).values


def iared2_tokens(
    encoder: VisionTransformer,
    policy: TokenPolicy | RandomTokenPolicy,
    images: torch.Tensor,
    counts: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised tokens (B, prefix + counts[-1], D), kept patch ids (B, counts[-1])).

    The ids are positions in the original patch grid. Dropped tokens leave the sequence: no
    later block sees them. Gradients reach the encoder through the kept tokens (fine-tuning
    under a fixed policy); the policy's choice itself takes none.
    """
    check_counts(counts, len(policy.stage_starts), encoder.cfg.num_patches)
    starts = {
        start: (s, count)
        for s, (start, count) in enumerate(zip(policy.stage_starts, counts, strict=True))
    }
    prefix = encoder.num_prefix_tokens
    x = encoder.embed(images)
    ids = torch.arange(x.shape[1] - prefix, device=x.device).expand(x.shape[0], -1)
    for i, block in enumerate(encoder.blocks):
        if i in starts:
            stage, count = starts[i]
            with torch.no_grad():
                pick = policy.choose(stage, x[:, prefix:], count)
            x = torch.cat([x[:, :prefix], take_tokens(x[:, prefix:], pick)], dim=1)
            ids = ids.gather(1, pick)
        x = block(x)
    return encoder.norm(x), ids


@torch.no_grad()
def iared2_features(
    encoder: VisionTransformer,
    policy: TokenPolicy | RandomTokenPolicy,
    images: torch.Tensor,
    counts: list[int],
) -> torch.Tensor:
    """Pooled features as `encoder.features`, over the tokens the policy kept."""
    was = encoder.training, policy.training
    encoder.eval(), policy.eval()
    try:
        return encoder.pool(iared2_tokens(encoder, policy, images, counts)[0])
    finally:
        encoder.train(was[0]), policy.train(was[1])


def iared2_flops(encoder_cfg, stage_starts: list[int], counts: list[int], heads=4, head_dim=32):
    """Forward FLOPs per image (`bench.flops.encoder_inference_flops`), interpreters included
    (heads=0: none, as for `RandomTokenPolicy`)."""
    prefix = 1 if encoder_cfg.cls_token else 0
    d = encoder_cfg.embed_dim
    tokens, per_block, interpreters = encoder_cfg.num_patches, [], 0.0
    starts = dict(zip(stage_starts, counts, strict=True))
    for i in range(encoder_cfg.depth):
        if i in starts:
            interpreters += 2 * tokens * d * heads * head_dim  # the interpreter's projection
            tokens = starts[i]
        per_block.append(tokens + prefix)
    return float(encoder_inference_flops(encoder_cfg, per_block)) + interpreters


# --- the paper's input-adaptive rule: each image keeps its own number of tokens ---------------


def check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold < 1.0:
        raise ConfigError(f"--threshold must be a keep probability in [0, 1), got {threshold}")


@torch.no_grad()
def adaptive_tokens(
    encoder: VisionTransformer, policy: TokenPolicy, images: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised tokens (B, prefix + N, D), kept (B, prefix + N) bool, counts (B, stages)).

    Each stage keeps every patch token still in the sequence whose keep probability exceeds
    `threshold` (the most probable one if none does), so each image keeps its own number of
    tokens: counts[b, s] is what image b keeps at stage s. Batched: a dropped token stays in the
    tensor but is hidden from attention and pooling from its stage on (`masked_block`), which
    gives the kept tokens the outputs they would have were it removed; the interpreters score
    each token on its own, so scoring the dropped ones as well changes nothing.
    """
    check_threshold(threshold)
    prefix = encoder.num_prefix_tokens
    starts = {start: s for s, start in enumerate(policy.stage_starts)}
    x = encoder.embed(images)
    kept = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    counts = []
    for i, block in enumerate(encoder.blocks):
        if i in starts:
            probs = policy.interpreters[starts[i]](x[:, prefix:]).masked_fill(~kept[:, prefix:], -1)
            top = F.one_hot(probs.argmax(dim=1), probs.shape[1]).bool()
            kept = torch.cat([kept[:, :prefix], (probs > threshold) | top], dim=1)
            counts.append(kept[:, prefix:].sum(dim=1))
        x = masked_block(block, x, kept)
    return encoder.norm(x), kept, torch.stack(counts, dim=1)


@torch.no_grad()
def adaptive_features(
    encoder: VisionTransformer, policy: TokenPolicy, images: torch.Tensor, threshold: float = 0.5
) -> torch.Tensor:
    """Pooled features over the tokens `adaptive_tokens` kept."""
    was = encoder.training, policy.training
    encoder.eval(), policy.eval()
    try:
        tokens, kept, _ = adaptive_tokens(encoder, policy, images, threshold)
        return masked_pool(encoder, tokens, kept)
    finally:
        encoder.train(was[0]), policy.train(was[1])


def distribution(values) -> dict[str, float]:
    """mean, min, quartiles and max of a list of numbers."""
    v = torch.as_tensor(values, dtype=torch.float64)
    q = torch.quantile(v, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    keys = ("min", "q25", "median", "q75", "max")
    return {"mean": v.mean().item(), **dict(zip(keys, q.tolist(), strict=True))}


def tokens_per_image(encoder_cfg, stage_starts: list[int], counts: torch.Tensor, **kw) -> dict:
    """What each image kept: counts (images, stages) -> the distribution of kept patch tokens
    at each stage and of each image's FLOPs (`iared2_flops` of its own counts), also as a
    fraction of the plain encoder's (no interpreters: what the comparison table divides by)."""
    full = encoder_inference_flops(encoder_cfg)
    flops = [iared2_flops(encoder_cfg, stage_starts, row, **kw) for row in counts.tolist()]
    return {
        "images": len(flops),
        "kept_per_stage": [distribution(counts[:, s]) for s in range(counts.shape[1])],
        "flops": distribution(flops),
        "flops_fraction": distribution([f / full for f in flops]),
    }


@torch.no_grad()
def adaptive_report(
    encoder: VisionTransformer,
    policy: TokenPolicy,
    images: torch.Tensor,
    mean,
    std,
    threshold: float = 0.5,
    batch: int = 256,
) -> dict:
    """`tokens_per_image` of uint8 `images` under the adaptive rule at `threshold`."""
    device = next(encoder.parameters()).device
    counts = torch.cat([
        adaptive_tokens(encoder, policy, normalize(images[i : i + batch].to(device), mean, std),
                        threshold)[2].cpu()
        for i in range(0, len(images), batch)
    ])  # fmt: skip
    spec = policy.spec
    stats = tokens_per_image(
        encoder.cfg, spec.stage_starts, counts, heads=spec.heads, head_dim=spec.head_dim
    )
    return {"rule": f"keep probability > {threshold}", "threshold": threshold, **stats}


def counts_for_flops(encoder_cfg, stage_starts: list[int], target: float, **kw) -> list[int]:
    """The non-increasing keep counts whose FLOPs are nearest `target` (ties: more tokens early).

    Exhaustive over count schedules: fine for the short sequences and few stages this is for."""
    n = encoder_cfg.num_patches
    best, best_gap = None, math.inf

    def walk(prefix: list[int], top: int) -> None:
        nonlocal best, best_gap
        if len(prefix) == len(stage_starts):
            gap = abs(iared2_flops(encoder_cfg, stage_starts, prefix, **kw) - target)
            if gap < best_gap - 1e-6:
                best, best_gap = list(prefix), gap
            return
        for c in range(top, 0, -1):
            walk([*prefix, c], c)

    walk([], n)
    return best


def counts_for_budget(encoder_cfg, stage_starts, keep: float | None, flops: float | None):
    """Keep counts from a per-stage keep fraction, or from a FLOPs fraction of the full encoder."""
    if keep is not None:
        return keep_counts(encoder_cfg.num_patches, keep, len(stage_starts))
    if flops is None or not 0.0 < flops <= 1.0:
        raise ConfigError(f"--flops must be a fraction in (0, 1], got {flops}")
    full = iared2_flops(encoder_cfg, stage_starts, [encoder_cfg.num_patches] * len(stage_starts))
    return counts_for_flops(encoder_cfg, stage_starts, flops * full)


# --- training: REINFORCE on a frozen encoder --------------------------------------------------


def masked_block(block: Block, x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """`block(x)` where tokens with kept == 0 are invisible as keys: the same outputs, for the
    kept tokens, as removing the others. kept: (B, N) bool."""
    b, n, _ = x.shape
    attn = block.attn
    # head width from the layer (-1): a structurally pruned block has fewer heads of full width
    q, k, v = attn.qkv(block.norm1(x)).view(b, n, 3, attn.num_heads, -1).unbind(2)
    mask = kept[:, None, None, :]  # (B, 1, 1, N), True = attend
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    x = x + attn.proj(y.transpose(1, 2).reshape(b, n, -1))
    return x + block.mlp(block.norm2(x))


def masked_pool(encoder: VisionTransformer, tokens: torch.Tensor, kept: torch.Tensor):
    """`encoder.pool` over the kept tokens only."""
    if encoder.cfg.pool == "avg":
        prefix = encoder.num_prefix_tokens
        w = kept[:, prefix:, None].to(tokens.dtype)
        return (tokens[:, prefix:] * w).sum(1) / w.sum(1).clamp(min=1)
    return tokens[:, 0]


def episode(
    encoder: VisionTransformer,
    policy: TokenPolicy,
    x: torch.Tensor,
    stage: int,
    counts: list[int],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the encoder with stages < `stage` dropping as at inference, stage `stage` sampling.

    Returns (pooled features, log-probability of the sampled actions (B,), fraction kept (B,)).
    Only the log-probability carries gradients (to interpreter `stage`).
    """
    prefix = encoder.num_prefix_tokens
    start = policy.spec.stage_starts[stage]
    with torch.no_grad():
        h = encoder.embed(x)
        for i, block in enumerate(encoder.blocks[:start]):
            if i in policy.spec.stage_starts:
                s = policy.spec.stage_starts.index(i)
                pick = policy_choice(policy.interpreters[s], h[:, prefix:], counts[s])
                h = torch.cat([h[:, :prefix], take_tokens(h[:, prefix:], pick)], dim=1)
            h = block(h)
    probs = policy.interpreters[stage](h[:, prefix:]).clamp(1e-6, 1 - 1e-6)
    action = torch.bernoulli(probs.detach(), generator=generator)
    log_prob = (action * probs.log() + (1 - action) * (1 - probs).log()).sum(dim=1)
    kept = torch.cat([torch.ones_like(action[:, :prefix]), action], dim=1).bool()
    with torch.no_grad():
        for block in encoder.blocks[start:]:
            h = masked_block(block, h, kept)
        features = masked_pool(encoder, encoder.norm(h), kept)
    return features, log_prob, action.mean(dim=1)


def reward(correct: torch.Tensor, kept_fraction: torch.Tensor, tau: float) -> torch.Tensor:
    """IA-RED²'s reward: 1 - kept² when right (fewer tokens, more reward), -tau when wrong."""
    return torch.where(correct, 1 - kept_fraction**2, torch.full_like(kept_fraction, -tau))


@dataclass
class TrainSettings:
    steps_per_stage: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    tau: float = 0.5
    seed: int = 0


def fit_reward_head(
    encoder: VisionTransformer,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean,
    std,
    batch: int = 256,
    seed: int = 0,
) -> LinearProbe:
    """The linear head that judges correctness: fit on the full encoder's pooled features."""
    device = next(encoder.parameters()).device
    feats = torch.cat([
        encoder.features(normalize(images[i : i + batch].to(device), mean, std)).float()
        for i in range(0, len(images), batch)
    ])  # fmt: skip
    head = fit_probe(
        feats, labels.to(device), num_classes_of(labels), lr=0.1,
        settings=ProbeSettings(epochs=20, batch_size=min(256, len(labels)), seed=seed),
    )  # fmt: skip
    return head.eval()


def train_policy(
    encoder: VisionTransformer,
    policy: TokenPolicy,
    head: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean,
    std,
    counts: list[int],
    settings: TrainSettings | None = None,
    progress: bool = False,
) -> list[list[float]]:
    """Train the interpreters stage by stage; returns each stage's mean reward per step."""
    s = settings or TrainSettings()
    check_counts(counts, len(policy.interpreters), encoder.cfg.num_patches)
    device = next(encoder.parameters()).device
    encoder.eval().requires_grad_(False)
    head.eval().requires_grad_(False)
    policy.to(device).train()
    gen = torch.Generator().manual_seed(s.seed)
    sample_gen = torch.Generator(device=device).manual_seed(s.seed + 1)
    history = []
    for stage, interpreter in enumerate(policy.interpreters):
        opt = torch.optim.Adam(interpreter.parameters(), lr=s.lr)
        rewards = []
        bar = tqdm(
            range(s.steps_per_stage),
            desc=f"IA-RED² stage {stage + 1}/{len(policy.interpreters)}",
            disable=not progress, dynamic_ncols=True, mininterval=progress_interval(),
        )  # fmt: skip
        for _ in bar:
            rows = torch.randint(len(images), (s.batch_size,), generator=gen)
            x = normalize(images[rows].to(device), mean, std)
            y = labels[rows].to(device)
            features, log_prob, kept = episode(encoder, policy, x, stage, counts, sample_gen)
            with torch.no_grad():
                correct = head(features.float()).argmax(dim=1) == y
                r = reward(correct, kept, s.tau)
            loss = -((r - r.mean()) * log_prob).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rewards.append(r.mean().item())
            bar.set_postfix(reward=f"{rewards[-1]:.3f}", kept=f"{kept.mean().item():.2f}")
        history.append(rewards)
    policy.eval()
    return history


# --- measuring: features in batches, speed interleaved -----------------------------------------


@torch.no_grad()
def batched_features(
    fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mean, std, batch, device
) -> torch.Tensor:
    """fn (normalised images on `device` -> pooled features) over uint8 `images`, on the CPU."""
    return torch.cat([
        fn(normalize(images[i : i + batch].to(device), mean, std)).float().cpu()
        for i in range(0, len(images), batch)
    ])  # fmt: skip


# --- saving and loading -----------------------------------------------------------------------


def save_policy(policy: TokenPolicy, folder: str | Path, record: dict) -> Path:
    """policy.safetensors (the weights) beside iared2.json (spec, counts and `record`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    save_file(state, folder / POLICY_FILE)
    (folder / RESULT_FILE).write_text(json.dumps({"spec": asdict(policy.spec), **record}, indent=1))
    return folder


def load_policy(folder: str | Path) -> tuple[TokenPolicy, dict]:
    """(policy, the record saved beside it)."""
    folder = Path(folder)
    where = folder / RESULT_FILE
    try:
        record = json.loads(where.read_text())
        spec = PolicySpec(**record["spec"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where}: not an IA-RED² result with a 'spec' ({exc})") from None
    policy = TokenPolicy(spec)
    try:
        weights = load_file(folder / POLICY_FILE)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{folder / POLICY_FILE}: cannot read ({exc})") from None
    try:
        policy.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{folder / POLICY_FILE}: does not fit {spec} ({first})") from None
    return policy.eval(), record
