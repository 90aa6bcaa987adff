"""HPM, hard patches mining (Wang et al., 2023): MAE that also learns which patches are hard,
and hides those more and more as training goes on.

1. An MAE (encoder on visible patches, light decoder, pixel loss on hidden patches), plus a
   loss predictor: a second light decoder over the same latents that predicts, for every
   patch, how large its reconstruction loss will be.
2. The loss predictor learns the *order* of difficulty, not its size (the paper's relative
   objective): for every pair of hidden patches of an image, a logistic loss on the difference
   of their predicted losses, labelled by which of the two was really reconstructed worse.
3. Masks go from easy to hard: the random draw is kept, except that a growing share of the
   hidden patches (0 at the start, `hard_share_end` = 1/2 at the end, linear in training
   progress) are the patches predicted hardest. The prediction comes from an EMA copy of the
   encoder and loss predictor shown the whole image, as in the authors' code.

The mask is the contract's learned mask: `draw_mask` returns the random draw, `forward` turns
it into the hard mask with `harden` (only in training; an evaluation mask is used as given).
Where this differs from the authors' code: the loss predictor is a decoder of its own (theirs
shares the reconstruction decoder's input embedding and mask token); the schedule moves per
optimiser step, not per epoch; the EMA momentum ramps from 0.999 to 0.9999 over the first
half of training (theirs: over the first 100 epochs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask, MaskingConfig, mask_keeping_lowest, take_tokens
from mimkit.models.config import ModelConfig
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.base import EMATeacher, MethodOutput, MethodSettings, TrainingProgress
from mimkit.objectives.mae import mae_decoder
from mimkit.objectives.targets import pixel_target
from mimkit.patches import patchify


@dataclass
class HPMSettings(MethodSettings):
    name = "hpm"
    norm_pix_loss: bool = True
    hard_share_end: float = 0.5  # share of the hidden patches chosen as hardest, at the end
    predictor_weight: float = 1.0  # weight of the loss predictor's ranking loss
    ema_momentum: float = 0.999  # of the mask-making copy, at the start ...
    ema_momentum_end: float = 0.9999  # ... and from half-way through training on

    def check(self, model: ModelConfig) -> None:
        if not 0.0 <= self.hard_share_end <= 1.0:
            raise ConfigError(f"method.hard_share_end must be in [0, 1], got {self.hard_share_end}")
        for field in ("ema_momentum", "ema_momentum_end"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ConfigError(f"method.{field} must be in [0, 1], got {getattr(self, field)}")
        if self.predictor_weight < 0:
            raise ConfigError(f"method.predictor_weight must be >= 0, got {self.predictor_weight}")


def hardest_hidden(predicted: torch.Tensor, drawn: Mask, hard: int) -> Mask:
    """`drawn` with its `hard` highest-`predicted` (B, N) patches hidden for certain; the other
    hidden patches are the ones the draw ranked first, and the count kept is the draw's."""
    if hard == 0:
        return drawn
    # float32 whatever the autocast dtype: ranks above 256 would tie in bfloat16
    priority = drawn.ids_restore.float()  # the draw's order: highest hidden first
    hardest = predicted.float().topk(hard, dim=1).indices
    priority = priority.scatter(1, hardest, float(drawn.num_patches))  # above every rank
    return mask_keeping_lowest(priority, drawn.ids_keep.shape[1])


def ranking_loss(predicted: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """HPM's relative loss-prediction objective over (B, M) patches of each image: for every
    ordered pair (i, j) with actual[j] != actual[i], a logistic loss that predicted[j] -
    predicted[i] has the sign of actual[j] - actual[i]; averaged over those pairs."""
    actual = actual.detach()
    harder = (actual[:, None, :] > actual[:, :, None]).float()
    easier = (actual[:, None, :] < actual[:, :, None]).float()
    gap = predicted[:, None, :] - predicted[:, :, None]
    loss = -(harder * F.logsigmoid(gap) + easier * F.logsigmoid(-gap))
    return loss.sum() / (harder + easier).sum().clamp(min=1.0)


class HardPatchesMining(nn.Module):
    reconstructs_pixels = False  # its pixels cover the hidden patches of a mask it chose

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: HPMSettings | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.masking = masking or MaskingConfig()
        self.settings = settings or HPMSettings()
        self.encoder = VisionTransformer(cfg)
        self.decoder = mae_decoder(cfg, cfg.patch_dim)
        self.loss_predictor = mae_decoder(cfg, 1)
        # the copy that makes the masks: it follows the student after every step (`ema_pairs`)
        self.ema_encoder = EMATeacher(self.encoder)
        self.ema_loss_predictor = EMATeacher(self.loss_predictor)
        self.progress = TrainingProgress()

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
        if self.training:
            mask = self.harden(images, mask)
        latent = self.encoder(images, mask.ids_keep)
        pred = self.decoder(latent, mask.ids_restore)
        patch_loss = (pred.float() - self.target(images).float()).pow(2).mean(dim=-1)  # (B, N)
        reconstruction = take_tokens(patch_loss[..., None], mask.ids_masked)[..., 0]  # (B, M)
        predicted = self.loss_predictor(latent, mask.ids_restore)[..., 0]
        predicted = take_tokens(predicted[..., None], mask.ids_masked)[..., 0]
        loss = reconstruction.mean() + self.settings.predictor_weight * ranking_loss(
            predicted.float(), reconstruction
        )
        return MethodOutput(loss, pred, mask)

    def harden(self, images: torch.Tensor, drawn: Mask) -> Mask:
        """The easy-to-hard mask: `hard_share_end * progress` of the hidden patches are those
        the EMA loss predictor ranks hardest on the whole image; the rest are the draw's."""
        share = self.settings.hard_share_end * self.progress()
        hard = int(drawn.ids_masked.shape[1] * share)
        if hard == 0:
            return drawn
        return hardest_hidden(self.predict_losses(images), drawn, hard)

    @torch.no_grad()
    def predict_losses(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N) reconstruction losses the EMA copy predicts, every patch visible."""
        latent = self.ema_encoder(images)
        everything = torch.arange(self.cfg.num_patches, device=images.device)
        return self.ema_loss_predictor(latent, everything.expand(len(images), -1))[..., 0]

    def target(self, images: torch.Tensor) -> torch.Tensor:
        patches = patchify(images, self.cfg.patch_shape)
        return pixel_target(patches, self.settings.norm_pix_loss, "patch", self.cfg.in_chans)

    def ema_pairs(self, progress: float) -> list[tuple[EMATeacher, nn.Module, float]]:
        s = self.settings
        momentum = s.ema_momentum + min(1.0, 2 * progress) * (s.ema_momentum_end - s.ema_momentum)
        return [
            (self.ema_encoder, self.encoder, momentum),
            (self.ema_loss_predictor, self.loss_predictor, momentum),
        ]

    def reconstruct(self, images: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
        raise ConfigError(
            "HPM's pictures are not offered: use an MAE run to look at reconstructions"
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)
