"""MAE (He et al., 2021): mask most patches, encode the rest, reconstruct the hidden pixels.

1. Split the image into patches and hide a random `mask_ratio` of them per sample.
2. The encoder sees only the visible patches (no mask tokens), which makes it cheap.
3. A light decoder gets the encoded visible tokens plus a shared mask token at every hidden
   position, with position embeddings, and predicts each patch's pixels.
4. The loss is the mean squared error on hidden patches only; with `norm_pix_loss` the target
   is each patch normalised by its own mean and variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimkit.masking import Mask, mask_from_noise, random_masking
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


def masked_mse(pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Mean over hidden patches of each patch's mean squared error; visible patches cost nothing."""
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * hidden).sum() / hidden.sum()


class MaskedAutoencoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = VisionTransformer(cfg)
        p = cfg.patch_size
        self.decoder = MAEDecoder(
            encoder_dim=cfg.embed_dim,
            grid_hw=cfg.grid_hw,
            out_dim=p * p * cfg.in_chans,
            dim=cfg.decoder_embed_dim,
            depth=cfg.decoder_depth,
            num_heads=cfg.decoder_num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=cfg.qkv_bias,
            eps=cfg.layer_norm_eps,
        )

    def make_mask(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> Mask:
        if noise is not None:
            return mask_from_noise(noise, self.cfg.mask_ratio)
        return random_masking(
            images.shape[0], self.cfg.num_patches, self.cfg.mask_ratio, images.device, generator
        )

    def target(self, images: torch.Tensor) -> torch.Tensor:
        patches = patchify(images, self.cfg.patch_size)
        if not self.cfg.norm_pix_loss:
            return patches
        mean, std = patch_stats(patches)
        return (patches - mean) / std

    def forward(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        mask: Mask | None = None,
    ) -> MAEOutput:
        mask = mask if mask is not None else self.make_mask(images, generator, noise)
        latent = self.encoder(images, mask.ids_keep)
        pred = self.decoder(latent, mask.ids_restore)
        loss = masked_mse(pred.float(), self.target(images).float(), mask.binary)
        return MAEOutput(loss=loss, pred=pred, mask=mask)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
        """Images in the input's pixel space: the prediction, the masked input and their paste.

        norm-pix predictions are mapped back with the input's own per-patch mean/std, so the
        pictures show what the model predicted rather than normalised noise.
        """
        pred = self.forward(images, mask=mask).pred.float()
        patches = patchify(images.float(), self.cfg.patch_size)
        if self.cfg.norm_pix_loss:
            mean, std = patch_stats(patches)
            pred = pred * std + mean
        hidden = mask.binary[..., None]
        shape = (self.cfg.patch_size, self.cfg.grid_hw, self.cfg.in_chans)
        return {
            "reconstruction": unpatchify(pred, *shape),
            "masked": unpatchify(patches * (1 - hidden), *shape),
            "pasted": unpatchify(patches * (1 - hidden) + pred * hidden, *shape),
        }

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic features of whole images (no masking), pooled per `cfg.pool`."""
        return self.encoder.features(images)


def build_mae(cfg: ModelConfig) -> MaskedAutoencoder:
    return MaskedAutoencoder(resolve_model_config(cfg))
