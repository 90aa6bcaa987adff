"""G2SD generic distillation (Huang et al., 2023): a small MAE learns to think like a large one.

1. A large MAE (encoder and decoder), pretrained and frozen, is the teacher.
2. The student is a small MAE. Both see the same image with the same hidden patches; each
   encodes its visible patches and runs its decoder over the whole grid.
3. The teacher's decoder tokens after its last block (before its norm), layer-normalised without
   affine terms, are the target for every patch, hidden and visible alike. A two-layer MLP on the
   student's decoder tokens predicts them; the loss is the smooth L1 distance (beta 2.0).
4. What is transferred is task-agnostic: what the large model believes each patch contains,
   including the patches it could not see. The specific stage (fine-tuning against the
   fine-tuned teacher's predictions) is `mimkit eval finetune --teacher`.

The teacher is not part of the student's weights: student checkpoints are small and load
without it; `model.teacher_dim` records the target width so the student rebuilds alone.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask
from mimkit.models.decoders import MAEDecoder
from mimkit.models.registry import ModelConfig
from mimkit.objectives.mae import MAEOutput, MaskedAutoencoder

SMOOTH_L1_BETA = 2.0  # the authors' setting


def load_teacher_mae(path: str) -> MaskedAutoencoder:
    """The frozen teacher: a full MAE checkpoint (its decoder is needed, not just the encoder)."""
    from mimkit.train.checkpoint import load_model

    teacher, _ = load_model(path)
    if not isinstance(getattr(teacher, "decoder", None), MAEDecoder):
        raise ConfigError(
            f"model.teacher {path}: G2SD needs a teacher with an MAE decoder "
            f"(method mae), got {type(teacher).__name__}"
        )
    return teacher


class G2SD(MaskedAutoencoder):
    reconstructs_pixels = False

    def __init__(self, cfg: ModelConfig, teacher: MaskedAutoencoder | None = None) -> None:
        if teacher is not None:
            if tuple(teacher.cfg.grid_shape) != tuple(cfg.grid_shape):
                raise ConfigError(
                    f"model.teacher: its patch grid {teacher.cfg.grid_shape} differs from the "
                    f"student's {cfg.grid_shape}; use the same img_size and patch_size"
                )
            if teacher.cfg.cls_token != cfg.cls_token:
                raise ConfigError("model.teacher: teacher and student must agree on cls_token")
            cfg = replace(cfg, teacher_dim=teacher.cfg.decoder_embed_dim)
        if cfg.teacher_dim is None:
            raise ConfigError(
                f"model.teacher {cfg.teacher}: not found, and model.teacher_dim is not set"
            )
        super().__init__(cfg)
        # the decoder predicts teacher features, not pixels: an MLP on its pre-norm tokens
        self.decoder.norm = nn.Identity()
        self.decoder.pred = nn.Sequential(
            nn.Linear(cfg.decoder_embed_dim, cfg.teacher_dim),
            nn.GELU(),
            nn.Linear(cfg.teacher_dim, cfg.teacher_dim),
        )
        self._teacher = [teacher.eval().requires_grad_(False)] if teacher is not None else []

    @property
    def teacher(self) -> MaskedAutoencoder:
        if not self._teacher:
            raise ConfigError(
                f"model.teacher {self.cfg.teacher}: the teacher is needed to train, not found"
            )
        return self._teacher[0]

    def _apply(self, fn, *args, **kwargs):  # .to(), .half(): move the unregistered teacher too
        super()._apply(fn, *args, **kwargs)
        for teacher in self._teacher:
            teacher._apply(fn, *args, **kwargs)
        return self

    @torch.no_grad()
    def target(self, images: torch.Tensor, mask: Mask) -> torch.Tensor:
        """Teacher decoder tokens for every patch, normalised per token (no affine)."""
        teacher = self.teacher.eval()
        latent = teacher.encoder(images, mask.ids_keep)
        hidden = teacher.decoder.hidden(latent, mask.ids_restore)[:, teacher.decoder.prefix :]
        return F.layer_norm(hidden.float(), hidden.shape[-1:])

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None, mask: Mask | None = None) -> MAEOutput:  # fmt: skip
        mask = mask if mask is not None else self.make_mask(images, generator, noise)
        pred = self.decoder(self.encoder(images, mask.ids_keep), mask.ids_restore)
        loss = F.smooth_l1_loss(pred.float(), self.target(images, mask), beta=SMOOTH_L1_BETA)
        return MAEOutput(loss=loss, pred=pred, mask=mask)

    def reconstruct(self, images: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
        raise ConfigError("G2SD predicts teacher features, not pixels: there is no image to show")


def build_g2sd(cfg: ModelConfig) -> G2SD:
    """The student; its teacher is loaded when its checkpoint exists (training needs it)."""
    path = Path(cfg.teacher) if cfg.teacher else None
    teacher = load_teacher_mae(str(path)) if path is not None and path.exists() else None
    return G2SD(cfg, teacher)
