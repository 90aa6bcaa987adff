"""G2SD generic distillation (Huang et al., 2023): a small MAE learns to think like a large one.

1. A large MAE (encoder and decoder), pretrained and frozen, is the teacher.
2. The student is a small MAE. Both see the same image with the same hidden patches; each
   encodes its visible patches and runs its decoder over the whole grid.
3. The teacher's decoder tokens after its block `teacher_block` (the authors' `suplayer`, 4 of
   their teacher's 8; a teacher with fewer decoder blocks gives its last), before its norm,
   layer-normalised without affine terms, are the target for every patch, hidden and visible alike. A two-layer MLP on the
   student's decoder tokens predicts them; the loss is the smooth L1 distance (beta 2.0).
4. What is transferred is task-agnostic: what the large model believes each patch contains,
   including the patches it could not see. The specific stage (fine-tuning against the
   fine-tuned teacher's predictions) is `mimkit eval finetune --teacher`.

The teacher is not part of the student's weights: student checkpoints are small and load
without it; `method.teacher_dim` records the target width so the student rebuilds alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask, MaskingConfig
from mimkit.models.config import ModelConfig
from mimkit.models.decoders import MAEDecoder
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.base import (
    MethodOutput,
    MethodSettings,
    check_teacher_fits,
    frozen,
    require_teacher_width,
    teacher_missing,
)
from mimkit.objectives.mae import mae_decoder

SMOOTH_L1_BETA = 2.0  # the authors' setting


@dataclass
class G2SDSettings(MethodSettings):
    name = "g2sd"
    teacher: str | None = None  # checkpoint of the frozen teacher MAE (encoder and decoder)
    teacher_dim: int | None = None  # width of the teacher's decoder, read from the teacher
    teacher_block: int = 4  # the teacher decoder block (1-based) whose tokens are the target

    def check(self, model: ModelConfig) -> None:
        if not self.teacher:
            raise ConfigError("method.teacher: method 'g2sd' needs the checkpoint of a teacher")
        if self.teacher_block < 1:
            raise ConfigError(f"method.teacher_block must be >= 1, got {self.teacher_block}")


def check_teacher(teacher: nn.Module, cfg: ModelConfig, path: str | None) -> None:
    """The teacher must be an MAE on the student's patch grid, with the same prefix tokens."""
    if not isinstance(getattr(teacher, "decoder", None), MAEDecoder):
        raise ConfigError(
            f"method.teacher {path}: G2SD needs a teacher with an MAE decoder "
            f"(method mae), got {type(teacher).__name__}"
        )
    check_teacher_fits(teacher.cfg, cfg)


class G2SD(nn.Module):
    reconstructs_pixels = False  # it predicts teacher features: there is no image to show

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: G2SDSettings | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        super().__init__()
        settings = settings or G2SDSettings()
        if teacher is not None:
            check_teacher(teacher, cfg, settings.teacher)
            settings = replace(settings, teacher_dim=teacher.cfg.decoder_embed_dim)
        require_teacher_width(settings)
        self.cfg = cfg
        self.masking = masking or MaskingConfig()
        self.settings = settings
        width = settings.teacher_dim
        self.encoder = VisionTransformer(cfg)
        self.decoder = mae_decoder(  # MAE's decoder, predicting teacher tokens from pre-norm ones
            cfg,
            width,
            head=nn.Sequential(
                nn.Linear(cfg.decoder_embed_dim, width), nn.GELU(), nn.Linear(width, width)
            ),
            final_norm=False,
        )
        self.teacher = frozen(teacher)

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
        pred = self.decoder(self.encoder(images, mask.ids_keep), mask.ids_restore)
        loss = F.smooth_l1_loss(pred.float(), self.target(images, mask), beta=SMOOTH_L1_BETA)
        return MethodOutput(loss, pred, mask)

    @torch.no_grad()
    def target(self, images: torch.Tensor, mask: Mask) -> torch.Tensor:
        """Teacher decoder tokens for every patch, normalised per token (no affine)."""
        if self.teacher is None:
            raise teacher_missing(self.settings)
        teacher = self.teacher.model
        latent = teacher.encoder(images, mask.ids_keep)
        hidden = teacher.decoder.hidden(latent, mask.ids_restore, self.settings.teacher_block)
        hidden = hidden[:, teacher.decoder.num_prefix_tokens :]
        return F.layer_norm(hidden.float(), hidden.shape[-1:])

    def reconstruct(self, images: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
        raise ConfigError("G2SD predicts teacher features, not pixels: there is no image to show")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)
