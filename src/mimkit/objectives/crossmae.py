"""CrossMAE (Fu et al., 2024): MAE whose decoder only cross-attends, and reconstructs a part.

1. Mask as MAE does and encode the visible patches.
2. Choose a random `predict_fraction` of the hidden patches to reconstruct (partial
   reconstruction); only those become decoder queries.
3. Each query (mask token + its position) cross-attends to the encoder tokens, optionally a
   learned mix of several encoder blocks' outputs; queries never attend to each other.
4. The loss is MAE's (norm-pix) MSE, on the reconstructed subset only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimkit.mask_shapes import ConfigMasking, partial_reconstruction
from mimkit.masking import Mask
from mimkit.models.cross_decoder import CrossMAEDecoder
from mimkit.models.registry import ModelConfig
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.mae import pixel_target
from mimkit.patches import patchify


@dataclass
class CrossMAEOutput:
    loss: torch.Tensor
    pred: torch.Tensor  # (B, M, p*p*C) for the patches in `predicted`
    mask: Mask
    predicted: torch.Tensor  # (B, M) patch ids that were reconstructed


class CrossMAE(ConfigMasking, nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        predict_fraction: float = 0.25,
        mix_layers: bool = True,
        masking: str = "random",
    ) -> None:
        super().__init__()
        if not 0 < predict_fraction <= 1:
            raise ValueError(f"predict_fraction must be in (0, 1], got {predict_fraction}")
        self.cfg = cfg
        self.predict_fraction = predict_fraction
        self.masking = masking
        self.encoder = VisionTransformer(cfg)
        self.decoder = CrossMAEDecoder(
            encoder_dim=cfg.embed_dim,
            encoder_depth=cfg.depth,
            grid_hw=cfg.grid_hw,
            out_dim=cfg.patch_size**2 * cfg.in_chans,
            dim=cfg.decoder_embed_dim,
            depth=cfg.decoder_depth,
            num_heads=cfg.decoder_num_heads,
            mlp_ratio=cfg.mlp_ratio,
            eps=cfg.layer_norm_eps,
            mix_layers=cfg.mix_layers,
        )

    def target(self, images: torch.Tensor) -> torch.Tensor:
        return pixel_target(self.cfg, patchify(images, self.cfg.patch_size))

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None, mask: Mask | None = None) -> CrossMAEOutput:  # fmt: skip
        mask = mask if mask is not None else self.make_mask(images, generator, noise)
        predicted = partial_reconstruction(mask, self.predict_fraction, generator)
        out, hidden = self.encoder(images, mask.ids_keep, return_hidden=True)
        layers = [*hidden[1:-1], out]  # every block's output, the last one normalised
        pred = self.decoder(layers, predicted)
        target = self.target(images)
        target = torch.gather(target, 1, predicted[..., None].expand(-1, -1, target.shape[-1]))
        loss = ((pred.float() - target.float()) ** 2).mean()
        return CrossMAEOutput(loss=loss, pred=pred, mask=mask, predicted=predicted)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)
