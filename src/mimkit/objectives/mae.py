"""MAE (He et al., 2021): mask most patches, encode the rest, reconstruct the hidden pixels.

1. Split the image into patches and hide a random `mask_ratio` of them per sample.
2. The encoder sees only the visible patches (no mask tokens), which makes it cheap.
3. A light decoder gets the encoded visible tokens plus a shared mask token at every hidden
   position, with position embeddings, and predicts each patch's pixels.
4. The loss is the mean squared error on hidden patches only; with `norm_pix_loss` the target
   is each patch normalised by its own mean and variance.

The same object is VideoMAE for clips (B, C, T, H, W): tubelet patches, `masking: tube`, no
cls token, VideoMAE's position table and per-channel cube normalisation, all config fields.
With `decoder_mask_ratio` > 0 (VideoMAE V2) the decoder predicts only the running-cell subset
of positions and the loss covers the hidden patches among them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimkit.mask_shapes import ConfigMasking
from mimkit.masking import Mask, running_cell_keep
from mimkit.models.decoders import MAEDecoder
from mimkit.models.registry import ModelConfig, resolve_model_config
from mimkit.models.vit import VisionTransformer
from mimkit.patches import patchify, unpatchify

NORM_PIX_EPS = 1e-6


@dataclass
class MAEOutput:
    loss: torch.Tensor  # scalar: mean over hidden patches
    pred: torch.Tensor  # (B, N, p*p*C) predictions for every patch, in target space
    mask: Mask


def patch_stats(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and std (unbiased variance, as the MAE reference) used by norm-pix."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return mean, (var + NORM_PIX_EPS) ** 0.5


def cube_channel_norm(patches: torch.Tensor, channels: int) -> torch.Tensor:
    """VideoMAE's per-cube target: each channel of a patch standardised over the patch's pixels.

    Patch vectors are laid out (..., c) so channels are the fastest axis; the formula is
    VideoMAE's exactly: (x - mean) / (std_unbiased + 1e-6).
    """
    b, n, d = patches.shape
    x = patches.reshape(b, n, d // channels, channels)
    x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, keepdim=True).sqrt() + NORM_PIX_EPS)
    return x.reshape(b, n, d)


def pixel_target(cfg: ModelConfig, patches: torch.Tensor) -> torch.Tensor:
    """Patches as they are, or normalised per patch (norm-pix) or per cube channel (VideoMAE)."""
    if not cfg.norm_pix_loss:
        return patches
    if cfg.target_norm == "channel":
        return cube_channel_norm(patches, cfg.in_chans)
    mean, std = patch_stats(patches)
    return (patches - mean) / std


def masked_mse(pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Mean over hidden patches of each patch's mean squared error; visible patches cost nothing."""
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * hidden).sum() / hidden.sum()


class MaskedAutoencoder(ConfigMasking, nn.Module):
    reconstructs_pixels = True  # `reconstruct` gives pictures (subclasses with other targets: no)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = VisionTransformer(cfg)
        self.decoder = MAEDecoder(
            encoder_dim=cfg.embed_dim,
            grid_hw=cfg.grid_shape,
            out_dim=cfg.patch_dim,
            dim=cfg.decoder_embed_dim,
            depth=cfg.decoder_depth,
            num_heads=cfg.decoder_num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=cfg.qkv_bias,
            eps=cfg.layer_norm_eps,
            cls_token=cfg.cls_token,
            pos_embed=cfg.pos_embed,
        )

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        return patchify(images, self.cfg.patch_shape)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        return unpatchify(patches, self.cfg.patch_shape, self.cfg.grid_shape, self.cfg.in_chans)

    def target(self, images: torch.Tensor) -> torch.Tensor:
        return pixel_target(self.cfg, self.patchify(images))

    def forward(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        mask: Mask | None = None,
    ) -> MAEOutput:
        mask = mask if mask is not None else self.make_mask(images, generator, noise)
        latent = self.encoder(images, mask.ids_keep)
        if self.cfg.decoder_mask_ratio > 0 and self.training:
            return self._forward_decoder_masked(images, latent, mask, generator)
        pred = self.decoder(latent, mask.ids_restore)
        loss = masked_mse(pred.float(), self.target(images).float(), mask.binary)
        return MAEOutput(loss=loss, pred=pred, mask=mask)

    def _forward_decoder_masked(
        self,
        images: torch.Tensor,
        latent: torch.Tensor,
        mask: Mask,
        generator: torch.Generator | None,
    ) -> MAEOutput:
        """VideoMAE V2 dual masking: predict only running-cell positions; `pred` is (B, M, D)."""
        b = images.shape[0]
        keep = running_cell_keep(
            b, self.cfg.grid_shape, self.cfg.decoder_mask_ratio, images.device, generator
        )
        ids_pred = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        ids_pred = ids_pred[:, : int(keep[0].sum())]
        pred = self.decoder.forward_subset(latent, mask.ids_keep, ids_pred)
        target = torch.gather(
            self.target(images), 1, ids_pred[..., None].expand(-1, -1, pred.shape[-1])
        )
        hidden = torch.gather(mask.binary, 1, ids_pred)
        loss = masked_mse(pred.float(), target.float(), hidden)
        return MAEOutput(loss=loss, pred=pred, mask=mask)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
        """Images in the input's pixel space: the prediction, the masked input and their paste.

        norm-pix predictions are mapped back with the input's own per-patch mean/std, so the
        pictures show what the model predicted rather than normalised noise.
        """
        was_training = self.training
        self.eval()  # every patch predicted, also with decoder masking
        try:
            pred = self.forward(images, mask=mask).pred.float()
        finally:
            self.train(was_training)
        patches = self.patchify(images.float())
        if self.cfg.norm_pix_loss and self.cfg.target_norm == "channel":
            c = self.cfg.in_chans
            cubes = patches.reshape(*patches.shape[:2], -1, c)
            mean = cubes.mean(dim=-2, keepdim=True)
            std = cubes.var(dim=-2, keepdim=True).sqrt() + NORM_PIX_EPS
            pred = (pred.reshape(cubes.shape) * std + mean).reshape(patches.shape)
        elif self.cfg.norm_pix_loss:
            mean, std = patch_stats(patches)
            pred = pred * std + mean
        hidden = mask.binary[..., None]
        return {
            "reconstruction": self.unpatchify(pred),
            "masked": self.unpatchify(patches * (1 - hidden)),
            "pasted": self.unpatchify(patches * (1 - hidden) + pred * hidden),
        }

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic features of whole images (no masking), pooled per `cfg.pool`."""
        return self.encoder.features(images)


def build_mae(cfg: ModelConfig) -> MaskedAutoencoder:
    return MaskedAutoencoder(resolve_model_config(cfg))
