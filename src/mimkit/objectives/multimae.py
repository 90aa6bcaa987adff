"""MultiMAE (Bachmann et al., 2022): one encoder over the visible patches of several modalities.

1. A sample has several aligned inputs (`method.inputs`: e.g. image, depth, segmentation),
   each patchified by its own patch embedding (adapter) and given the same position table.
2. A fixed total of visible tokens (`masking.ratio` of all modalities' patches hidden) is
   shared among the modalities by a Dirichlet draw per sample (`alpha`, 1.0 in the paper), so
   one sample may see mostly depth and another mostly the image; within a modality the
   visible patches are random.
3. The shared encoder (with its global cls token) sees the visible tokens of every modality.
4. Each modality has a decoder: its queries are that modality's tokens (encoded where visible,
   a mask token where hidden) with position and modality embeddings; they cross-attend once to
   all encoded tokens (each with its own position and modality embedding), then pass a few
   self-attention blocks and predict the modality's patches.
5. The loss is, per modality, the (norm-pix) MSE on that modality's hidden patches, summed.

The first input's patch embedding is the encoder's own (`model.in_chans` is its channel count),
so `encoder` is a plain ViT of the first modality: exported and probed as any other. `encode`
takes any subset of the modalities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask, MaskingConfig, mask_keeping_lowest, num_kept, take_tokens
from mimkit.models.config import ModelConfig
from mimkit.models.cross_decoder import CrossAttentionBlock
from mimkit.models.pos_embed import sincos_2d
from mimkit.models.vit import Block, PatchEmbed, VisionTransformer, init_vit_weights
from mimkit.objectives.base import MethodOutput, MethodSettings, check_inputs, pooled_in_eval_mode
from mimkit.objectives.targets import pixel_target
from mimkit.patches import patchify


@dataclass
class MultiMAESettings(MethodSettings):
    name = "multimae"
    # name -> channels, in order; the first input's patch embedding is the encoder's own
    inputs: dict[str, int] = field(default_factory=lambda: {"image": 1, "depth": 1, "seg": 1})
    alpha: float = 1.0  # Dirichlet concentration of the per-sample share of visible tokens
    norm_pix_loss: bool = True

    def check(self, model: ModelConfig) -> None:
        check_inputs(self.inputs, model, count=1)
        if not self.alpha > 0:
            raise ConfigError(f"method.alpha must be > 0, got {self.alpha}")


def dirichlet_counts(
    batch: int,
    modalities: int,
    total: int,
    per_modality: int,
    alpha: float,
    device: torch.device | str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """(B, M) visible tokens per modality: a Dirichlet(alpha) share of `total` per sample,
    rounded so every row sums to `total` exactly, no modality above `per_modality`.

    Shares are rounded down and the tokens left go to the largest remainders; a modality
    capped at its patch count leaves its excess to the others, handed out in the same order.
    """
    if not 0 <= total <= modalities * per_modality:
        raise ValueError(f"{total} visible tokens do not fit {modalities} x {per_modality}")
    # a seeded Dirichlet draw: normalised Gamma(alpha) variables, in float64 because a small
    # alpha's draws underflow float32 to zero (a row that still does is shared evenly)
    concentration = torch.full(
        (batch, modalities), float(alpha), device=device, dtype=torch.float64
    )
    gamma = torch._standard_gamma(concentration, generator=generator)
    sums = gamma.sum(dim=1, keepdim=True)
    share = torch.where(sums > 0, gamma / sums.clamp_min(1e-300), 1.0 / modalities)
    exact = share * total
    counts = exact.floor().long().clamp(max=per_modality)
    order = torch.argsort(exact - counts, dim=1, descending=True)
    # hand the tokens still owed, one per modality in order of remainder, to those with room;
    # one pass suffices unless a modality can fill up (total > per_modality), then repeat
    while True:
        owed = total - counts.sum(dim=1)
        room = per_modality - counts.gather(1, order)
        ranked_room = room > 0
        # the first `owed` modalities (in remainder order) that still have room get one more
        rank = ranked_room.long().cumsum(dim=1)
        give = ranked_room & (rank <= owed[:, None])
        counts.scatter_add_(1, order, give.long())
        if total <= per_modality or not bool((owed > give.sum(dim=1)).any()):
            return counts


class ModalityDecoder(nn.Module):
    """MultiMAE's decoder for one modality: a cross-attention block from this modality's tokens
    to all encoded tokens, `depth` self-attention blocks, a linear prediction per patch."""

    def __init__(
        self,
        encoder_dim: int,
        out_dim: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        eps: float,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.cross = CrossAttentionBlock(dim, heads, mlp_ratio, eps)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, eps=eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.pred = nn.Linear(dim, out_dim)
        self.apply(init_vit_weights)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.cross(queries, context)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))


class MultiMAE(nn.Module):
    reconstructs_pixels = False  # several inputs: the one-image figure does not apply

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: MultiMAESettings | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.masking = masking or MaskingConfig()
        self.settings = s = settings or MultiMAESettings()
        self.names = list(s.inputs)  # in order: the first one's adapter is the encoder's own
        self.encoder = VisionTransformer(cfg)
        dim, p = cfg.embed_dim, cfg.patch_size
        self.adapters = nn.ModuleDict(
            {name: PatchEmbed(p, c, dim) for name, c in list(s.inputs.items())[1:]}
        )
        for adapter in self.adapters.values():
            w = adapter.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(adapter.proj.bias)
        d = cfg.decoder_embed_dim
        grid = sincos_2d(d, *cfg.grid_hw)[None]
        self.register_buffer("decoder_pos_embed", grid)  # (1, N, d), fixed
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        # one learned embedding per modality, added to every token the decoders read
        self.modality_embed = nn.Parameter(torch.zeros(len(self.names), d))
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.modality_embed, std=0.02)
        self.decoders = nn.ModuleDict(
            {
                name: ModalityDecoder(
                    dim, p * p * c, d, cfg.decoder_depth, cfg.decoder_num_heads, cfg.mlp_ratio,
                    cfg.layer_norm_eps,
                )
                for name, c in s.inputs.items()
            }
        )  # fmt: skip

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "modality_embed"}

    @property
    def visible_tokens(self) -> int:
        """The fixed total of visible tokens over all modalities."""
        return num_kept(len(self.names) * self.cfg.num_patches, self.masking.ratio)

    def draw_mask(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> Mask:
        """A mask over the modalities' patches laid end to end ([first's N, second's N, ...]):
        exactly `visible_tokens` kept per sample, shared by a Dirichlet draw."""
        m, n = len(self.names), self.cfg.num_patches
        counts = dirichlet_counts(
            batch, m, self.visible_tokens, n, self.settings.alpha, device, generator
        )
        # within each modality a random order; the first `count` of it are kept
        noise = torch.rand(batch, m, n, device=device, generator=generator)
        rank = noise.argsort(dim=2).argsort(dim=2)
        hidden = rank >= counts[..., None]
        priority = hidden.float() + noise  # kept tokens all rank below every hidden one
        return mask_keeping_lowest(priority.reshape(batch, m * n), self.visible_tokens)

    def forward(
        self,
        images: dict[str, torch.Tensor],
        mask: Mask | None = None,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        inputs = self.names
        if not isinstance(images, dict) or any(name not in images for name in inputs):
            raise ValueError(f"multimae: expected a dict with inputs {inputs}")
        first = images[inputs[0]]
        mask = mask if mask is not None else self.draw_mask(len(first), first.device, generator)
        tokens = torch.cat([self.tokens(name, images[name]) for name in inputs], dim=1)
        latent = self.encode_tokens(take_tokens(tokens, mask.ids_keep))
        hidden = mask.binary.split(self.cfg.num_patches, dim=1)
        preds, loss = [], 0.0
        for i, name in enumerate(inputs):
            pred = self.decode(name, latent, mask).float()
            target = self.target(images[name])
            per_patch = ((pred - target) ** 2).mean(dim=-1)
            # the modality's hidden patches only (a sample may show all of one modality)
            loss = loss + (per_patch * hidden[i]).sum() / hidden[i].sum().clamp_min(1)
            preds.append(pred)
        return MethodOutput(loss, torch.cat(preds, dim=-1), mask)

    def tokens(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) patch tokens of one modality with the encoder's position table."""
        embed = self.encoder.patch_embed if name == self.names[0] else self.adapters[name]
        return embed(x) + self.encoder.pos_embed[:, self.encoder.num_prefix_tokens :]

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The shared encoder on given patch tokens: (B, prefix + K, D), normalised."""
        h = self.encoder.with_prefix(tokens)
        for block in self.encoder.blocks:
            h = block(h)
        return self.encoder.norm(h)

    def decode(self, name: str, latent: torch.Tensor, mask: Mask) -> torch.Tensor:
        """(B, N, patch values) of modality `name` from the encoded visible tokens."""
        decoder, n = self.decoders[name], self.cfg.num_patches
        m, k = len(self.names), self.encoder.num_prefix_tokens
        x = decoder.embed(latent)
        prefix, visible = x[:, :k], x[:, k:]
        b, d = x.shape[0], x.shape[-1]
        # every token of every modality: its encoding where visible, the mask token elsewhere
        full = torch.cat([visible, self.mask_token.expand(b, m * n - visible.shape[1], d)], dim=1)
        full = take_tokens(full, mask.ids_restore)
        embeds = self.decoder_pos_embed[:, None] + self.modality_embed[None, :, None]
        full = full + embeds.reshape(1, m * n, d)
        i = self.names.index(name)
        queries = full[:, i * n : (i + 1) * n]
        context = torch.cat([prefix, take_tokens(full, mask.ids_keep)], dim=1)
        return decoder(queries, context)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        patches = patchify(x, self.cfg.patch_shape)
        return pixel_target(patches, self.settings.norm_pix_loss, "patch", x.shape[1]).float()

    @property
    def encoder_input(self) -> str:
        """The input `encoder` reads on its own (its patch embedding is the encoder's)."""
        return self.names[0]

    def pooled(self, images: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) features from every patch of the modalities given (any non-empty subset of
        `method.inputs`; a tensor is the first input), pooled per `model.pool`; trainable (in
        the module's mode, gradients kept): what fine-tuning trains and `encode` computes."""
        if not isinstance(images, dict):
            images = {self.names[0]: images}
        unknown = set(images) - set(self.names)
        if unknown or not images:
            raise ValueError(f"multimae: inputs are {self.names}, got {sorted(images)}")
        names = [name for name in self.names if name in images]
        tokens = torch.cat([self.tokens(name, images[name]) for name in names], dim=1)
        return self.encoder.pool(self.encode_tokens(tokens))

    def encode(self, images: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """`pooled` features, deterministic: eval mode, no gradients."""
        return pooled_in_eval_mode(self, images)
