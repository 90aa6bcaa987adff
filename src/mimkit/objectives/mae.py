"""MAE (He et al., 2021): mask most patches, encode the rest, reconstruct the hidden pixels.

1. Split the image into patches and hide a random `masking.ratio` of them per sample.
2. The encoder sees only the visible patches (no mask tokens), which makes it cheap.
3. A light decoder gets the encoded visible tokens plus a shared mask token at every hidden
   position, with position embeddings, and predicts each patch's pixels.
4. The loss is the mean squared error on hidden patches only; with `norm_pix_loss` the target
   is each patch normalised by its own mean and variance.

The same object is VideoMAE for clips (B, C, T, H, W): tubelet patches, `masking: tube`, no
cls token, VideoMAE's position table and per-channel cube normalisation (`target_norm:
channel`). With `decoder_mask_ratio` > 0 (VideoMAE V2) the decoder predicts only the
running-cell subset of positions and the loss covers the hidden patches among them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask, MaskingConfig, running_cell_targets, take_tokens
from mimkit.models.config import ModelConfig, resolve_model_config
from mimkit.models.decoders import MAEDecoder
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.base import MethodOutput, MethodSettings
from mimkit.objectives.targets import (
    cube_channel_norm,  # noqa: F401 - part of this module's reading: VideoMAE's target
    masked_mse,
    patch_stats,  # noqa: F401 - norm-pix statistics, as the MAE reference names them
    pixel_target,
    unnormalise_prediction,
)
from mimkit.patches import patchify, unpatchify


@dataclass
class MAESettings(MethodSettings):
    name = "mae"
    norm_pix_loss: bool = True  # target: each patch normalised by its own mean and std
    target_norm: str = "patch"  # norm-pix over the whole patch (MAE) | per cube channel (VideoMAE)
    decoder_mask_ratio: float = 0.0  # > 0: VideoMAE V2 running-cell decoder masking

    def check(self, model: ModelConfig) -> None:
        if self.target_norm not in ("patch", "channel"):
            raise ConfigError(
                f"method.target_norm must be 'patch' or 'channel', got {self.target_norm!r}"
            )
        if not 0.0 <= self.decoder_mask_ratio < 1.0:
            raise ConfigError(
                f"method.decoder_mask_ratio must be in [0, 1), got {self.decoder_mask_ratio}"
            )
        gh, gw = model.grid_hw
        clips = len(model.input_size) == 3
        if self.decoder_mask_ratio > 0 and (
            not clips or gh % 2 or gw % 2 or int(4 * self.decoder_mask_ratio) == 0
        ):
            raise ConfigError(
                "method.decoder_mask_ratio (running-cell masking) needs clips with an even patch "
                f"grid and a ratio of at least 0.25; got grid {model.grid_shape}, "
                f"ratio {self.decoder_mask_ratio}"
            )


def mae_decoder(cfg: ModelConfig, out_dim: int, **overrides) -> MAEDecoder:
    """MAE's light decoder for this model's geometry, predicting `out_dim` values per patch.

    `overrides` (e.g. `head=`, `final_norm=`) change only what a method's reference changes, so
    the geometry stays in one place.
    """
    return MAEDecoder(
        encoder_dim=cfg.embed_dim,
        grid_hw=cfg.grid_shape,
        out_dim=out_dim,
        dim=cfg.decoder_embed_dim,
        depth=cfg.decoder_depth,
        num_heads=cfg.decoder_num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        eps=cfg.layer_norm_eps,
        cls_token=cfg.cls_token,
        pos_embed=cfg.pos_embed,
        **overrides,
    )


class MaskedAutoencoder(nn.Module):
    reconstructs_pixels = True

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: MAESettings | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.masking = masking or MaskingConfig()
        self.settings = settings or MAESettings()
        self.encoder = VisionTransformer(cfg)
        self.decoder = mae_decoder(cfg, cfg.patch_dim)

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
        latent = self.encoder(images, mask.ids_keep)
        if self.settings.decoder_mask_ratio > 0 and self.training:
            predicted = self.decoder_targets(len(images), images.device, generator)
            pred = self.decoder.forward_subset(latent, mask.ids_keep, predicted)
            target = take_tokens(self.target(images), predicted)
            hidden = torch.gather(mask.hidden_weight, 1, predicted)
            loss = masked_mse(pred.float(), target.float(), hidden)
            return MethodOutput(loss, pred, mask, predicted)
        pred = self.decoder(latent, mask.ids_restore)
        loss = masked_mse(pred.float(), self.target(images).float(), mask.hidden_weight)
        return MethodOutput(loss, pred, mask)

    def target(self, images: torch.Tensor) -> torch.Tensor:
        s = self.settings
        return pixel_target(
            self.patchify(images), s.norm_pix_loss, s.target_norm, self.cfg.in_chans
        )

    def decoder_targets(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None
    ) -> torch.Tensor:
        """VideoMAE V2 dual masking: the (B, M) running-cell positions the decoder predicts."""
        chosen = running_cell_targets(
            batch, self.cfg.grid_shape, self.settings.decoder_mask_ratio, device, generator
        )
        order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)
        return order[:, : int(chosen[0].sum())]

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        return patchify(images, self.cfg.patch_shape)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        return unpatchify(patches, self.cfg.patch_shape, self.cfg.grid_shape, self.cfg.in_chans)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
        """Images in the input's pixel space: the prediction, the masked input and their paste."""
        was_training = self.training
        self.eval()  # every patch predicted, also with decoder masking
        try:
            pred = self.forward(images, mask=mask).pred.float()
        finally:
            self.train(was_training)
        patches = self.patchify(images.float())
        if self.settings.norm_pix_loss:
            pred = unnormalise_prediction(
                pred, patches, self.settings.target_norm, self.cfg.in_chans
            )
        hidden = mask.binary[..., None]
        return {
            "reconstruction": self.unpatchify(pred),
            "masked": self.unpatchify(patches * (1 - hidden)),
            "pasted": self.unpatchify(patches * (1 - hidden) + pred * hidden),
        }

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic features of whole images (no masking), pooled per `cfg.pool`."""
        return self.encoder.features(images)


def build_mae(
    cfg: ModelConfig, masking: MaskingConfig | None = None, settings: MAESettings | None = None
) -> MaskedAutoencoder:
    """An MAE for `cfg` (resolved here, so presets and unset fields are filled)."""
    return MaskedAutoencoder(resolve_model_config(cfg), masking, settings)
