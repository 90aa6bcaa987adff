"""CROMA (Fuller et al., 2023): two masked encoders, a contrastive loss, a fusion encoder.

1. A sample has two aligned inputs (optical and radar bands in the paper; `method.inputs`).
   Each is masked independently (`masking.ratio`) and encoded by its own ViT: the first at the
   model's depth, the second at `second_depth` (half, as CROMA's radar encoder).
2. Positions enter as 2D-ALiBi attention biases (models/alibi.py), not as a table, so the
   encoders run on larger images than they were trained on.
3. Each encoder's tokens are averaged, passed through an MLP head and a projection, and the
   two are pulled together by a symmetric InfoNCE loss over the (local) batch.
4. A fusion encoder reads the second input's tokens (queries) and cross-attends to the first's,
   with X-ALiBi biases between the two sets of positions.
5. A light MAE decoder, at the second input's mask layout, reconstructs the patches of both
   inputs; the loss is the (norm-pix) MSE on each input's own hidden patches, plus the
   contrastive loss times `contrast_weight`.

`method.position: sincos` swaps ALiBi for MAE's fixed table in both encoders (and no biases in
the fusion encoder): the comparison the size-extrapolation check needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask, MaskingConfig
from mimkit.models.alibi import AlibiViT, alibi_bias
from mimkit.models.config import ModelConfig
from mimkit.models.decoders import MAEDecoder
from mimkit.models.vit import Attention, Mlp, VisionTransformer, init_vit_weights
from mimkit.objectives.base import MethodOutput, MethodSettings, check_inputs, pooled_in_eval_mode
from mimkit.objectives.targets import masked_mse, pixel_target
from mimkit.patches import patchify


@dataclass
class CROMASettings(MethodSettings):
    name = "croma"
    # name -> channels: the first input (full-depth encoder, model.in_chans), then the second
    inputs: dict[str, int] = field(default_factory=lambda: {"optical": 3, "radar": 3})
    position: str = "alibi"  # alibi (CROMA) | sincos (MAE's table, for comparison)
    second_depth: int | None = None  # the second input's encoder; None: half the model's depth
    fusion_depth: int | None = None  # None: half the model's depth
    contrast_weight: float = 1.0
    temperature: float = 0.07  # the learned logit scale starts at 1 / temperature
    norm_pix_loss: bool = True

    def check(self, model: ModelConfig) -> None:
        check_inputs(self.inputs, model, count=2)
        if len(self.inputs) != 2:
            raise ConfigError(f"method.inputs: croma takes exactly two inputs, got {self.inputs}")
        if self.position not in ("alibi", "sincos"):
            raise ConfigError(f"method.position must be 'alibi' or 'sincos', got {self.position!r}")
        if model.cls_token or model.pool != "avg":
            raise ConfigError(
                "method croma: its encoders pool the average of their tokens; set "
                "model.cls_token false and model.pool avg"
            )
        for key in ("second_depth", "fusion_depth"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"method.{key} must be >= 1, got {getattr(self, key)}")
        if self.contrast_weight < 0 or not self.temperature > 0:
            raise ConfigError(
                f"method.contrast_weight must be >= 0 and method.temperature > 0, got "
                f"{self.contrast_weight}, {self.temperature}"
            )


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP/CROMA's contrastive loss of two (B, D) batches: sample i of `a` and of `b` are the
    positive pair; cross-entropy over the batch in both directions, averaged."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    logits = logit_scale * a @ b.T
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@dataclass(frozen=True)
class MaskPair:
    """Independent masks of the two inputs; `select` cuts both (the loop's rank rows)."""

    first: Mask
    second: Mask

    def select(self, rows: slice | torch.Tensor) -> MaskPair:
        return MaskPair(self.first.select(rows), self.second.select(rows))


class CrossAttention(nn.Module):
    """Queries from x, keys and values from `context`, with an optional additive bias."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        (b, m, d), n = x.shape, context.shape[1]
        heads = self.num_heads
        q = self.q(x).view(b, m, heads, d // heads).transpose(1, 2)
        k, v = self.kv(context).view(b, n, 2, heads, d // heads).unbind(2)
        out = F.scaled_dot_product_attention(
            q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias
        )
        return self.proj(out.transpose(1, 2).reshape(b, m, d))


class FusionBlock(nn.Module):
    """x + self_attn(x) [ALiBi], x + cross_attn(x, context) [X-ALiBi], then x + mlp(x)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm_q = nn.LayerNorm(dim, eps=eps)
        self.norm_kv = nn.LayerNorm(dim, eps=eps)
        self.cross = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        self_bias: torch.Tensor | None,
        cross_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), self_bias)
        x = x + self.cross(self.norm_q(x), self.norm_kv(context), cross_bias)
        return x + self.mlp(self.norm2(x))


def pooled_head(dim: int, mlp_ratio: float, eps: float) -> nn.Sequential:
    """CROMA's head on an encoder's average token: LayerNorm, MLP, then the contrastive projection."""
    return nn.Sequential(
        nn.LayerNorm(dim, eps=eps), Mlp(dim, int(dim * mlp_ratio)), nn.Linear(dim, dim)
    )


class CROMA(nn.Module):
    reconstructs_pixels = False  # two inputs: the one-image reconstruction figure does not apply

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: CROMASettings | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.masking = masking or MaskingConfig()
        self.settings = s = settings or CROMASettings()
        half = max(1, cfg.depth // 2)
        self.names = list(s.inputs)  # [first, second]
        channels = list(s.inputs.values())
        second_cfg = replace(cfg, in_chans=channels[1], depth=s.second_depth or half)
        encoder = AlibiViT if s.position == "alibi" else VisionTransformer
        self.encoder = encoder(cfg)  # the first input's: exported and probed
        self.second_encoder = encoder(second_cfg)
        dim, eps = cfg.embed_dim, cfg.layer_norm_eps
        self.fusion = nn.ModuleList(
            FusionBlock(dim, cfg.num_heads, cfg.mlp_ratio, eps)
            for _ in range(s.fusion_depth or half)
        )
        self.fusion_norm = nn.LayerNorm(dim, eps=eps)
        self.heads = nn.ModuleList(pooled_head(dim, cfg.mlp_ratio, eps) for _ in range(2))
        self.fusion.apply(init_vit_weights)
        self.heads.apply(init_vit_weights)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / s.temperature)))
        self.patch_dims = [cfg.patch_size**2 * c for c in channels]
        self.decoder = MAEDecoder(
            encoder_dim=dim,
            grid_hw=cfg.grid_shape,
            out_dim=sum(self.patch_dims),
            dim=cfg.decoder_embed_dim,
            depth=cfg.decoder_depth,
            num_heads=cfg.decoder_num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=cfg.qkv_bias,
            eps=eps,
            cls_token=False,
        )

    def no_weight_decay(self) -> set[str]:
        return {"logit_scale"}

    def draw_mask(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> MaskPair:
        grid = self.cfg.grid_shape
        first = self.masking.draw(batch, grid, device, generator)
        return MaskPair(first, self.masking.draw(batch, grid, device, generator))

    def forward(
        self,
        images: dict[str, torch.Tensor],
        mask: MaskPair | None = None,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        x1, x2 = self.inputs_of(images)
        mask = mask if mask is not None else self.draw_mask(len(x1), x1.device, generator)
        keep1, keep2 = mask.first.ids_keep, mask.second.ids_keep
        tokens1 = self.encoder(x1, keep1)
        tokens2 = self.second_encoder(x2, keep2)
        contrast = self.contrastive_loss(tokens1, tokens2)
        joint = self.fuse(tokens2, tokens1, self.cfg.grid_hw, keep2, keep1)
        pred = self.decoder(joint, mask.second.ids_restore).float()
        pred1, pred2 = pred.split(self.patch_dims, dim=-1)
        reconstruction = masked_mse(pred1, self.target(x1), mask.first.binary) + masked_mse(
            pred2, self.target(x2), mask.second.binary
        )
        loss = reconstruction + self.settings.contrast_weight * contrast
        return MethodOutput(loss, pred, mask)

    def inputs_of(self, images: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(images, dict) or any(name not in images for name in self.names):
            raise ValueError(f"croma: expected a dict with inputs {self.names}")
        return images[self.names[0]], images[self.names[1]]

    def contrastive_loss(self, tokens1: torch.Tensor, tokens2: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE between the two encoders' projected average tokens."""
        z1, z2 = (
            head(t.mean(dim=1)) for head, t in zip(self.heads, (tokens1, tokens2), strict=True)
        )
        return symmetric_info_nce(z1, z2, self.logit_scale.exp().clamp(max=100))

    def fuse(
        self,
        queries: torch.Tensor,
        context: torch.Tensor,
        grid_hw: tuple[int, int],
        ids_q: torch.Tensor | None = None,
        ids_k: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The fusion encoder: the second input's tokens attend to themselves (ALiBi) and to the
        first input's tokens (X-ALiBi between the two position sets)."""
        self_bias = cross_bias = None
        if self.settings.position == "alibi":
            heads, device = self.cfg.num_heads, queries.device
            self_bias = alibi_bias(grid_hw, heads, ids_q, ids_q, device).to(queries.dtype)
            cross_bias = alibi_bias(grid_hw, heads, ids_q, ids_k, device).to(queries.dtype)
        x = queries
        for block in self.fusion:
            x = block(x, context, self_bias, cross_bias)
        return self.fusion_norm(x)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        patches = patchify(x, self.cfg.patch_shape)
        return pixel_target(patches, self.settings.norm_pix_loss, "patch", x.shape[1]).float()

    @property
    def encoder_input(self) -> str:
        """The input `encoder` (the full-depth one, exported and probed) reads."""
        return self.names[0]

    def pooled(self, images: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) features: a tensor (the first input) or a dict with one input gives that
        input's encoder's average token; a dict with both gives the fusion's average token.
        Any image size whose sides are multiples of the patch (ALiBi needs no table).
        Trainable (in the module's mode, gradients kept): what fine-tuning trains and `encode`
        computes."""
        if not isinstance(images, dict):
            images = {self.names[0]: images}
        first, second = self.names
        unknown = set(images) - {first, second}
        if unknown or not images:
            raise ValueError(f"croma: inputs are {[first, second]}, got {sorted(images)}")
        if second not in images:
            return self.encoder(images[first]).mean(dim=1)
        tokens2 = self.second_encoder(images[second])
        if first not in images:
            return tokens2.mean(dim=1)
        tokens1 = self.encoder(images[first])
        p = self.cfg.patch_size
        grid = (images[second].shape[-2] // p, images[second].shape[-1] // p)
        return self.fuse(tokens2, tokens1, grid).mean(dim=1)

    def encode(self, images: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """`pooled` features, deterministic: eval mode, no gradients."""
        return pooled_in_eval_mode(self, images)
