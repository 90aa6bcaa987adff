"""DropPos (Wang et al., 2023): hide patches, drop the position embeddings of most of the visible
ones, and make the model say where each of those came from.

1. Hide patches as MAE does (75%); the encoder sees the visible ones only.
2. Of the visible tokens, a further random share (`pos_ratio`, 75%) lose their position
   embedding: they enter with a learned position mask token instead. Both draws are made by
   `draw_mask`, visibly, into one `DropPosMask`.
3. A light decoder without any position embedding (self-attention over the encoded tokens)
   classifies each visible token into one of the N patch positions.
4. The loss is the cross-entropy on the tokens whose position was dropped, and only those.
   Options, as in the paper: position smoothing (targets spread over nearby positions by a
   Gaussian of width `sigma` on the patch grid, shrinking linearly to exact positions over
   training) and attentive reconstruction (each token's loss weighted by how similar the
   encoder, shown the whole image, finds it to the cls token: softmax of cosine / 0.1).

Where this differs from the authors' code: the smoothing map is normalised per row (theirs
divides by the row sums across columns, the same on a square grid's symmetric map up to
row-sum differences at the borders); tokens are not shuffled (without positions the encoder is
permutation-equivariant, so shuffling changes nothing); the multi-task MAE branch is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask, MaskingConfig, mask_from_noise, take_tokens
from mimkit.models.config import ModelConfig
from mimkit.models.vit import Block, VisionTransformer, init_vit_weights
from mimkit.objectives.base import MethodOutput, MethodSettings, TrainingProgress


@dataclass
class DropPosSettings(MethodSettings):
    name = "droppos"
    pos_ratio: float = 0.75  # share of the visible tokens whose position embedding is dropped
    sigma: float = 1.0  # position smoothing at the start (0: exact one-hot targets)
    sigma_decay: bool = True  # shrink sigma linearly to 0 over training
    attentive: bool = True  # weight each token's loss by its similarity to the cls token

    def check(self, model: ModelConfig) -> None:
        if len(model.grid_shape) != 2:
            raise ConfigError("method 'droppos' classifies positions on a 2-D patch grid")
        if not 0.0 <= self.pos_ratio < 1.0:
            raise ConfigError(f"method.pos_ratio must be in [0, 1), got {self.pos_ratio}")
        if self.sigma < 0:
            raise ConfigError(f"method.sigma must be >= 0, got {self.sigma}")
        if self.attentive and not model.cls_token:
            raise ConfigError(
                "method.attentive needs model.cls_token true (it reads the cls token)"
            )


@dataclass(frozen=True)
class DropPosMask:
    """Which patches are hidden (`patches`), and which visible tokens lose their position:
    `positions` indexes the K visible tokens in `patches.ids_keep` order (its `ids_masked`
    are the dropped ones)."""

    patches: Mask
    positions: Mask

    def select(self, rows: slice | torch.Tensor) -> DropPosMask:
        return DropPosMask(self.patches.select(rows), self.positions.select(rows))

    @property
    def dropped(self) -> torch.Tensor:
        """(B, K) float, 1 where the visible token's position embedding is dropped."""
        return self.positions.binary


def smoothing_map(grid: tuple[int, int], sigma: float, device=None) -> torch.Tensor:
    """(N, N) target distributions: row i spreads position i over the grid by a Gaussian of
    squared distance (exp(-d^2 / sigma^2), the authors' form), normalised per row; sigma 0 is
    the identity (exact positions)."""
    h, w = grid
    n = h * w
    if sigma == 0:
        return torch.eye(n, device=device)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    coords = torch.stack([ys.flatten(), xs.flatten()], dim=1).float()
    weight = torch.exp(-torch.cdist(coords, coords).pow(2) / sigma**2)
    return weight / weight.sum(dim=1, keepdim=True)


class DropPos(nn.Module):
    reconstructs_pixels = False  # it predicts positions

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: DropPosSettings | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.masking = masking or MaskingConfig()
        self.settings = settings or DropPosSettings()
        dim = cfg.decoder_embed_dim
        self.encoder = VisionTransformer(cfg)
        self.mask_pos_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        nn.init.normal_(self.mask_pos_token, std=0.02)
        self.decoder_embed = nn.Linear(cfg.embed_dim, dim)
        self.decoder = nn.ModuleList(
            Block(dim, cfg.decoder_num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.layer_norm_eps)
            for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.position_head = nn.Linear(dim, cfg.num_patches)
        for part in (self.decoder_embed, self.decoder, self.decoder_norm, self.position_head):
            part.apply(init_vit_weights)
        self.progress = TrainingProgress()

    def no_weight_decay(self) -> set[str]:
        return {"mask_pos_token"}

    def draw_mask(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> DropPosMask:
        patches = self.masking.draw(batch, self.cfg.grid_shape, device, generator)
        visible = patches.ids_keep.shape[1]
        noise = torch.rand(batch, visible, device=device, generator=generator)
        return DropPosMask(patches, mask_from_noise(noise, self.settings.pos_ratio))

    def forward(
        self,
        images: torch.Tensor,
        mask: DropPosMask | None = None,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        mask = mask if mask is not None else self.draw_mask(len(images), images.device, generator)
        logits = self.classify_positions(self.encode_dropped(images, mask))  # (B, K, N)
        weight = mask.dropped
        if self.settings.attentive:
            weight = weight * self.attention_weights(images, mask.patches)
        target = self.position_targets(mask.patches)
        per_token = -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)
        loss = (per_token * weight).sum() / weight.sum().clamp(min=1e-12)
        return MethodOutput(loss, logits, mask, mask.patches.ids_keep)

    def encode_dropped(self, images: torch.Tensor, mask: DropPosMask) -> torch.Tensor:
        """Encoder output (B, 1 + K, D) for the visible patches, the dropped ones carrying the
        position mask token instead of their position embedding."""
        enc = self.encoder
        p = enc.num_prefix_tokens
        tokens = take_tokens(enc.patch_embed(images), mask.patches.ids_keep)
        positions = take_tokens(
            enc.pos_embed[:, p:].expand(len(images), -1, -1), mask.patches.ids_keep
        )
        dropped = mask.dropped[..., None].to(tokens.dtype)
        positions = positions * (1 - dropped) + self.mask_pos_token.to(tokens.dtype) * dropped
        h = enc.with_prefix(tokens + positions)
        for block in enc.blocks:
            h = block(h)
        return enc.norm(h)

    def classify_positions(self, latent: torch.Tensor) -> torch.Tensor:
        """Scores (B, K, N) over the N patch positions for each visible token; no positions in."""
        x = self.decoder_embed(latent)
        for block in self.decoder:
            x = block(x)
        return self.position_head(self.decoder_norm(x))[:, self.encoder.num_prefix_tokens :]

    def position_targets(self, patches: Mask) -> torch.Tensor:
        """(B, K, N): each visible token's true position, smoothed by the current sigma."""
        s = self.settings
        sigma = s.sigma * (1 - self.progress()) if s.sigma_decay else s.sigma
        table = smoothing_map(self.cfg.grid_hw, sigma, patches.ids_keep.device)
        return table[patches.ids_keep]

    @torch.no_grad()
    def attention_weights(self, images: torch.Tensor, patches: Mask) -> torch.Tensor:
        """(B, K): softmax over all patches of cos(cls, patch) / 0.1 on the whole image, taken at
        the visible ones and renormalised, times K (so the weights average 1)."""
        tokens = self.encoder(images)
        p = self.encoder.num_prefix_tokens
        sim = F.cosine_similarity(tokens[:, :1], tokens[:, p:], dim=-1)
        weights = torch.gather(F.softmax(sim.float() / 0.1, dim=-1), 1, patches.ids_keep)
        return weights / weights.sum(dim=1, keepdim=True) * weights.shape[1]

    def reconstruct(self, images: torch.Tensor, mask: DropPosMask) -> dict[str, torch.Tensor]:
        raise ConfigError("DropPos predicts positions, not pixels: there is no image to show")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)
