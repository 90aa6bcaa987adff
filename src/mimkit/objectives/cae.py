"""CAE, the context autoencoder (Chen et al., 2023): predict the hidden patches' *latents*
from the visible ones, then decode pixels from those predictions alone.

1. The encoder sees only the visible patches (as MAE); its latents are projected to the
   regressor's width.
2. A latent regressor of cross-attention blocks: one query per hidden patch (a mask token plus
   that patch's position) attends to the visible latents and to the queries themselves, with
   positions on queries and keys; the visible latents are read, never updated. Its output is
   the predicted latent of each hidden patch.
3. Alignment: the same encoder, shown the hidden patches alone, gives their latents; with the
   gradient stopped they are the target of the predicted latents (MSE, weight 2). The
   encoder's representation of what is hidden is thus predicted in the encoder's own space,
   which keeps the reconstruction work out of the encoder.
4. A decoder of self-attention blocks over the predicted latents only (no visible tokens)
   maps them to each hidden patch's pixels (MSE on normalised pixels).

Where this differs from the authors' code: the decoder's targets are MAE's normalised pixels,
not DALL-E tokens (mimkit has no tokenizer), and the blocks are pre-norm without layer scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask, MaskingConfig, take_tokens
from mimkit.models.config import ModelConfig
from mimkit.models.pos_embed import position_table
from mimkit.models.vit import Block, Mlp, VisionTransformer, attention, init_vit_weights
from mimkit.objectives.base import MethodOutput, MethodSettings
from mimkit.objectives.targets import pixel_target
from mimkit.patches import patchify


@dataclass
class CAESettings(MethodSettings):
    name = "cae"
    norm_pix_loss: bool = True
    regressor_depth: int = (
        2  # cross-attention blocks (CAE base: 4); the decoder's: model.decoder_depth
    )
    align_weight: float = 2.0  # the authors' weight of the alignment loss

    def check(self, model: ModelConfig) -> None:
        if self.regressor_depth < 1:
            raise ConfigError(f"method.regressor_depth must be >= 1, got {self.regressor_depth}")
        if self.align_weight < 0:
            raise ConfigError(f"method.align_weight must be >= 0, got {self.align_weight}")


class RegressorBlock(nn.Module):
    """Queries attend to [context, queries]: positions added to queries and keys, not values;
    the context is read, never updated."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim, eps=eps)
        self.norm_k = nn.LayerNorm(dim, eps=eps)
        self.norm_v = nn.LayerNorm(dim, eps=eps)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self,
        queries: torch.Tensor,
        context: torch.Tensor,
        query_pos: torch.Tensor,
        context_pos: torch.Tensor,
    ) -> torch.Tensor:
        b, m, d = queries.shape
        keys = torch.cat([context, queries], dim=1)
        key_pos = torch.cat([context_pos, query_pos], dim=1)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, self.num_heads, d // self.num_heads).transpose(1, 2)

        q = heads(self.q(self.norm_q(queries + query_pos)))
        k = heads(self.k(self.norm_k(keys + key_pos)))
        v = heads(self.v(self.norm_v(keys)))
        out = attention(q, k, v).transpose(1, 2).reshape(b, m, d)
        x = queries + self.proj(out)
        return x + self.mlp(self.norm2(x))


class ContextAutoencoder(nn.Module):
    reconstructs_pixels = False  # its pixels cover the hidden patches only

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: CAESettings | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.masking = masking or MaskingConfig(strategy="block", ratio=0.5)
        self.settings = settings or CAESettings()
        dim, heads, eps = cfg.decoder_embed_dim, cfg.decoder_num_heads, cfg.layer_norm_eps
        self.encoder = VisionTransformer(cfg)
        # encoder latents -> the regressor's width (CAE: only when the widths differ)
        self.to_regressor = nn.Sequential(nn.Linear(cfg.embed_dim, dim), nn.LayerNorm(dim, eps=eps))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", position_table(cfg.pos_embed, dim, cfg.grid_shape, False))
        self.regressor = nn.ModuleList(
            RegressorBlock(dim, heads, cfg.mlp_ratio, eps)
            for _ in range(self.settings.regressor_depth)
        )
        self.regressor_norm = nn.LayerNorm(dim, eps=eps)
        self.decoder = nn.ModuleList(
            Block(dim, heads, cfg.mlp_ratio, cfg.qkv_bias, eps) for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, cfg.patch_dim)
        for part in (self.to_regressor, self.regressor, self.regressor_norm, self.decoder,
                     self.decoder_norm, self.head):  # fmt: skip
            part.apply(init_vit_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def draw_mask(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> Mask:
        return self.masking.draw(batch, self.cfg.grid_shape, device, generator)

    def forward(
        self,
        images: torch.Tensor,
        mask: Mask | None = None,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        mask = mask if mask is not None else self.draw_mask(len(images), images.device, generator)
        predicted = self.regress(images, mask)
        pred = self.decode(predicted, mask)
        target = take_tokens(self.target(images), mask.ids_masked)
        reconstruction = F.mse_loss(pred.float(), target.float())
        alignment = F.mse_loss(predicted.float(), self.latent_target(images, mask).float())
        loss = reconstruction + self.settings.align_weight * alignment
        return MethodOutput(loss, pred, mask, mask.ids_masked)

    def positions(self, ids: torch.Tensor) -> torch.Tensor:
        return take_tokens(self.pos_embed.expand(len(ids), -1, -1), ids)

    def latents(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The encoder's latents of patches `ids` (B, K), encoded alone, at the regressor's width."""
        tokens = self.encoder(images, ids)[:, self.encoder.num_prefix_tokens :]
        return self.to_regressor(tokens)

    def regress(self, images: torch.Tensor, mask: Mask) -> torch.Tensor:
        """Predicted latents (B, M, dim) of the hidden patches, from the visible ones."""
        context = self.latents(images, mask.ids_keep)
        queries = self.mask_token.expand(len(images), mask.ids_masked.shape[1], -1)
        query_pos, context_pos = self.positions(mask.ids_masked), self.positions(mask.ids_keep)
        for block in self.regressor:
            queries = block(queries, context, query_pos, context_pos)
        return self.regressor_norm(queries)

    @torch.no_grad()
    def latent_target(self, images: torch.Tensor, mask: Mask) -> torch.Tensor:
        """The alignment target: the encoder's own latents of the hidden patches, shown alone,
        with the gradient stopped (CAE's teacher is the encoder itself: momentum 0)."""
        return self.latents(images, mask.ids_masked)

    def decode(self, predicted: torch.Tensor, mask: Mask) -> torch.Tensor:
        """Pixels (B, M, patch_dim) of the hidden patches from their predicted latents alone."""
        x = predicted + self.positions(mask.ids_masked)
        for block in self.decoder:
            x = block(x)
        return self.head(self.decoder_norm(x))

    def target(self, images: torch.Tensor) -> torch.Tensor:
        patches = patchify(images, self.cfg.patch_shape)
        return pixel_target(patches, self.settings.norm_pix_loss, "patch", self.cfg.in_chans)

    def reconstruct(self, images: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
        raise ConfigError("CAE's pictures are not offered: it predicts hidden patches only")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)
