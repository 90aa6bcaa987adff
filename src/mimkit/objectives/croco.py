"""CroCo (Weinzaepfel et al., 2022): cross-view completion. Hide most of one view of a scene
and rebuild it from what is left and from a second, whole view of the same scene.

1. Two views of one scene: the inputs `masked_view` and `reference_view` of a sample with
   several inputs (`data.source: multi`, e.g. `mimkit data synth fmnist-pairs`, the default
   preset); a batch of single images is turned into pairs here instead: two overlapping
   crops of each image, the second moved from the first by a random offset of up to
   `pair_shift` of the side (known: `overlapping_crops` returns it).
2. The masked view loses `masking.ratio` of its patches (0.9, as the paper); one shared
   (siamese) encoder sees its visible patches, and every patch of the reference view.
3. The decoder puts mask tokens at the hidden positions and runs blocks of self-attention
   among the masked view's tokens, then cross-attention from them to the reference view's
   encoded tokens: the only way the reference view reaches the prediction.
4. The loss is MAE's: normalised pixels (norm-pix) of the masked view, on hidden patches only.

Where this differs from the authors' code: fixed sin-cos position tables (CroCo v1's; v2 uses
RoPE), the same table for both views, and mimkit's ViT (with its cls token, when configured).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask, MaskingConfig
from mimkit.models.config import ModelConfig
from mimkit.models.cross_decoder import CrossAttentionBlock
from mimkit.models.pos_embed import position_table
from mimkit.models.vit import Attention, VisionTransformer, init_vit_weights
from mimkit.objectives.base import MethodOutput, MethodSettings, pooled_in_eval_mode
from mimkit.objectives.targets import masked_mse, pixel_target
from mimkit.patches import patchify


@dataclass
class CroCoSettings(MethodSettings):
    name = "croco"
    norm_pix_loss: bool = True
    masked_view: str = "view1"  # the input hidden at masking.ratio and rebuilt
    reference_view: str = "view2"  # the input seen whole, read through cross-attention only
    pair_shift: float = 0.25  # single images: the second crop moves up to this share of the side

    def check(self, model: ModelConfig) -> None:
        if self.masked_view == self.reference_view:
            raise ConfigError(
                f"method.masked_view and method.reference_view must differ, both are "
                f"{self.masked_view!r}"
            )
        if not 0.0 < self.pair_shift < 1.0:
            raise ConfigError(f"method.pair_shift must be in (0, 1), got {self.pair_shift}")


class CrossViewBlock(nn.Module):
    """x + self_attn(norm1(x)), then CrossMAE's block: x + cross_attn(norm_q(x),
    norm_kv(memory)) and x + mlp(norm2(x)). The memory is read, never updated."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.cross = CrossAttentionBlock(dim, num_heads, mlp_ratio, eps)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return self.cross(x, memory)


class CroCoDecoder(nn.Module):
    """The masked view's tokens (visible latents and mask tokens, with positions) through
    `CrossViewBlock`s reading the reference view's tokens; one prediction per patch."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.decoder_embed_dim
        self.num_prefix_tokens = 1 if cfg.cls_token else 0
        self.embed = nn.Linear(cfg.embed_dim, dim)  # shared by both views, as the paper
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        table = position_table("sincos", dim, cfg.grid_shape, cfg.cls_token)
        self.register_buffer("pos_embed", table)
        self.blocks = nn.ModuleList(
            CrossViewBlock(
                dim, cfg.decoder_num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.layer_norm_eps
            )
            for _ in range(cfg.decoder_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.pred = nn.Linear(dim, cfg.patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_vit_weights)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def forward(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, reference: torch.Tensor
    ) -> torch.Tensor:
        """`latent` (B, prefix + K, D): the masked view's encoded visible patches;
        `reference` (B, prefix + N, D): the reference view's, every patch. -> (B, N, patch_dim)."""
        k = self.num_prefix_tokens
        x = self.embed(latent)
        b, n = ids_restore.shape
        tokens = torch.cat([x[:, k:], self.mask_token.expand(b, n - x.shape[1] + k, -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :k], tokens], dim=1) + self.pos_embed
        memory = self.embed(reference) + self.pos_embed
        for block in self.blocks:
            x = block(x, memory)
        return self.pred(self.norm(x))[:, k:]


def overlapping_crops(
    images: torch.Tensor, shift: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two crops of each image, each (1 - shift) of the side, resized to the image's size:
    (view1, view2, offset), `offset` (B, 2) the (dy, dx) of view2's crop from view1's as a
    share of the image side, each in [-shift, shift]."""
    b = images.shape[0]
    side = 1.0 - shift
    corners = torch.rand(2, b, 2, device=images.device, generator=generator) * shift
    views = []
    for corner in corners:  # two views: an affine crop box per sample
        theta = torch.zeros(b, 2, 3, device=images.device)
        theta[:, 0, 0] = theta[:, 1, 1] = side
        theta[:, 0, 2] = (corner[:, 1] + side / 2) * 2 - 1  # box centre x in [-1, 1]
        theta[:, 1, 2] = (corner[:, 0] + side / 2) * 2 - 1
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        views.append(F.grid_sample(images, grid, mode="bilinear", align_corners=False))
    return views[0], views[1], corners[1] - corners[0]


class CroCo(nn.Module):
    reconstructs_pixels = False  # its pictures would need the pair; none are drawn

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: CroCoSettings | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.masking = masking or MaskingConfig(ratio=0.9)
        self.settings = settings or CroCoSettings()
        self.encoder = VisionTransformer(cfg)  # shared by both views (siamese)
        self.decoder = CroCoDecoder(cfg)

    def draw_mask(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> Mask:
        return self.masking.draw(batch, self.cfg.grid_shape, device, generator)

    def views(
        self, images: torch.Tensor | dict[str, torch.Tensor], generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked view, reference view): two inputs of the sample, or two crops of one image."""
        s = self.settings
        if not isinstance(images, dict):
            view1, view2, _ = overlapping_crops(images, s.pair_shift, generator)
            return view1, view2
        missing = [v for v in (s.masked_view, s.reference_view) if v not in images]
        if missing:
            raise ConfigError(
                f"croco: the batch has inputs {sorted(images)}, not {missing} "
                "(method.masked_view / method.reference_view name data.inputs)"
            )
        return images[s.masked_view], images[s.reference_view]

    def forward(
        self,
        images: torch.Tensor | dict[str, torch.Tensor],
        mask: Mask | None = None,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        view1, view2 = self.views(images, generator)
        mask = mask if mask is not None else self.draw_mask(len(view1), view1.device, generator)
        latent = self.encoder(view1, mask.ids_keep)  # the masked view: visible patches only
        reference = self.encoder(view2)  # the reference view: every patch
        pred = self.decoder(latent, mask.ids_restore, reference)
        loss = masked_mse(pred.float(), self.target(view1).float(), mask.binary)
        return MethodOutput(loss, pred, mask)

    def target(self, images: torch.Tensor) -> torch.Tensor:
        patches = patchify(images, self.cfg.patch_shape)
        return pixel_target(patches, self.settings.norm_pix_loss, "patch", self.cfg.in_chans)

    @property
    def encoder_input(self) -> str:
        """The input whose features the encoder gives (it is shared: either view's)."""
        return self.settings.masked_view

    def pooled(self, images: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) features of single images, or of a sample's masked view (either view, if only
        one is given): the encoder alone, no mask, pooled per `model.pool`. Trainable (in the
        module's mode, gradients kept): what fine-tuning trains and `encode` computes."""
        if isinstance(images, dict):
            s = self.settings
            images = images[s.masked_view] if s.masked_view in images else images[s.reference_view]
        return self.encoder.pool(self.encoder(images))

    def encode(self, images: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """`pooled` features, deterministic: eval mode, no gradients."""
        return pooled_in_eval_mode(self, images)
