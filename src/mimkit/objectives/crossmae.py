"""CrossMAE (Fu et al., 2024): MAE whose decoder only cross-attends, and reconstructs a part.

1. Mask as MAE does and encode the visible patches.
2. Choose `predict_fraction` of all patches (as the reference counts it), drawn among the hidden
   ones, to reconstruct (partial reconstruction); only those become decoder queries.
3. Each query (mask token + its position) cross-attends to the encoder tokens, optionally a
   free linear mix of the encoder blocks' outputs with a LayerNorm per decoder block (the
   reference's weighted feature maps); queries never attend to each other.
4. The loss is MAE's (norm-pix) MSE, on the reconstructed subset only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask, MaskingConfig, take_tokens
from mimkit.models.config import ModelConfig
from mimkit.models.cross_decoder import CrossMAEDecoder
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.base import MethodOutput, MethodSettings
from mimkit.objectives.targets import pixel_target
from mimkit.patches import patchify


@dataclass
class CrossMAESettings(MethodSettings):
    name = "crossmae"
    norm_pix_loss: bool = True
    predict_fraction: float = 0.25  # share of all patches reconstructed (among the hidden ones)
    mix_layers: bool = True  # decoder blocks read a learned mix of encoder blocks

    def check(self, model: ModelConfig) -> None:
        if not 0.0 < self.predict_fraction <= 1.0:
            raise ConfigError(
                f"method.predict_fraction must be in (0, 1], got {self.predict_fraction}"
            )


def partial_reconstruction(
    mask: Mask, fraction: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The ids of `fraction` of all patches, drawn among each sample's hidden ones: (B, M).

    The reference counts its prediction ratio over all patches (at most the hidden ones)."""
    hidden = mask.ids_masked
    total = mask.ids_keep.shape[1] + hidden.shape[1]
    count = min(hidden.shape[1], max(1, round(total * fraction)))
    order = torch.rand(hidden.shape, device=hidden.device, generator=generator).argsort(dim=1)
    return hidden.gather(1, order[:, :count])


class CrossMAE(nn.Module):
    reconstructs_pixels = False  # it predicts a subset of patches only

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: CrossMAESettings | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.masking = masking or MaskingConfig()
        self.settings = settings or CrossMAESettings()
        self.encoder = VisionTransformer(cfg)
        self.decoder = CrossMAEDecoder(
            encoder_dim=cfg.embed_dim,
            encoder_depth=cfg.depth,
            grid_hw=cfg.grid_hw,
            out_dim=cfg.patch_dim,
            dim=cfg.decoder_embed_dim,
            depth=cfg.decoder_depth,
            num_heads=cfg.decoder_num_heads,
            mlp_ratio=cfg.mlp_ratio,
            eps=cfg.layer_norm_eps,
            mix_layers=self.settings.mix_layers,
        )

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
        predicted = partial_reconstruction(mask, self.settings.predict_fraction, generator)
        out, hidden = self.encoder(images, mask.ids_keep, return_hidden=True)
        pred = self.decoder([*hidden[1:-1], out], predicted)  # every block's output, last normed
        target = take_tokens(self.target(images), predicted)
        loss = ((pred.float() - target.float()) ** 2).mean()
        return MethodOutput(loss, pred, mask, predicted)

    def target(self, images: torch.Tensor) -> torch.Tensor:
        patches = patchify(images, self.cfg.patch_shape)
        return pixel_target(patches, self.settings.norm_pix_loss, "patch", self.cfg.in_chans)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)
