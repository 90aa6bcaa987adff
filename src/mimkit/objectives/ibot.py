"""iBOT-style masked self-distillation (Zhou et al., 2022): the student, shown a masked image,
matches what an EMA teacher, shown the whole image, says about every token.

1. Hide patches (iBOT: block-wise masks). The student encoder runs on the full sequence with the
   hidden patches replaced by a learned mask token (as SimMIM and BEiT); the teacher, an
   exponential moving average of the student (encoder and head), sees the unmasked image.
2. One projection head (an MLP to a bottleneck, then cosine scores against `out_dim` learned
   prototypes; iBOT's shared head) turns every token of both into scores over the prototypes.
3. The teacher's scores are centred (a running mean of its own outputs, one for the cls token,
   one for patch tokens) and sharpened by a low temperature, warmed up from 0.04 to 0.07;
   the student's are softened by 0.1. Each loss is the cross-entropy between the two.
4. The patch loss covers the hidden patches only, averaged per image; the cls loss compares
   the student's cls token with the teacher's.

One view, not two crops: mimkit's loop brings one augmented view per sample, so the cls loss
is the single-view simplification: the student's cls token of the masked view against the
teacher's cls token of the same view unmasked (iBOT compares the two global crops crosswise
and uses no same-view cls term). What is lost is the invariance to the crop; what stays is
the masked-vs-full distillation of the cls token and the whole patch objective.
Also left out: multi-crop local views, random mask ratios per image (the mask here is the
configured strategy and ratio for every image), freezing the prototypes in the first epoch,
and a cross-process all-reduce of the centres (under DDP each process's buffers are
broadcast from the first, so the centre follows the first process's batches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.errors import ConfigError
from mimkit.masking import Mask, MaskingConfig
from mimkit.models.config import ModelConfig
from mimkit.models.vit import VisionTransformer, init_vit_weights
from mimkit.objectives.base import EMATeacher, MethodOutput, MethodSettings, TrainingProgress


@dataclass
class IBOTSettings(MethodSettings):
    name = "ibot"
    out_dim: int = 1024  # prototypes of the head (iBOT: 8192)
    head_hidden_dim: int = 512  # (iBOT: 2048)
    head_bottleneck_dim: int = 128  # (iBOT: 256)
    student_temp: float = 0.1
    teacher_temp: float = 0.07  # after warm-up, for cls and patch scores alike
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup: float = 0.1  # share of training over which the temperature rises
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996  # EMA momentum at the start; cosine to 1 at the end
    cls_weight: float = 1.0
    patch_weight: float = 1.0

    def check(self, model: ModelConfig) -> None:
        if not model.cls_token:
            raise ConfigError("model.cls_token: method 'ibot' distils the cls token; set it true")
        for field in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"method.{field} must be > 0, got {getattr(self, field)}")
        for field in ("center_momentum", "teacher_momentum"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ConfigError(f"method.{field} must be in [0, 1), got {getattr(self, field)}")
        if not 0.0 <= self.teacher_temp_warmup <= 1.0:
            raise ConfigError(
                f"method.teacher_temp_warmup must be in [0, 1], got {self.teacher_temp_warmup}"
            )
        for field in ("out_dim", "head_hidden_dim", "head_bottleneck_dim"):
            if getattr(self, field) < 1:
                raise ConfigError(f"method.{field} must be >= 1, got {getattr(self, field)}")


class ProjectionHead(nn.Module):
    """Tokens (..., dim) -> scores (..., out_dim): a 3-layer MLP to an l2-normalised bottleneck,
    then cosine similarity to `out_dim` prototypes (DINO/iBOT's weight-normalised last layer
    with its norm fixed at 1)."""

    def __init__(self, dim: int, hidden: int, bottleneck: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )  # fmt: skip
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck))
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        self.mlp.apply(init_vit_weights)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(tokens), dim=-1)
        return z @ F.normalize(self.prototypes, dim=-1).t()


def distillation_ce(
    student: torch.Tensor,
    teacher: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float,
) -> torch.Tensor:
    """Per-token cross-entropy (...,) of the student's softened scores against the teacher's
    centred and sharpened ones; the teacher side carries no gradient."""
    target = F.softmax((teacher.detach().float() - center) / teacher_temp, dim=-1)
    return -(target * F.log_softmax(student.float() / student_temp, dim=-1)).sum(dim=-1)


def masked_patch_loss(per_patch: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Mean over images of the mean of `per_patch` (B, N) over each image's hidden patches."""
    return ((per_patch * hidden).sum(dim=1) / hidden.sum(dim=1).clamp(min=1.0)).mean()


class IBOT(nn.Module):
    reconstructs_pixels = False  # it distils teacher scores: there is no image to show

    def __init__(
        self,
        cfg: ModelConfig,
        masking: MaskingConfig | None = None,
        settings: IBOTSettings | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.masking = masking or MaskingConfig(strategy="block", ratio=0.4)
        self.settings = s = settings or IBOTSettings()
        self.encoder = VisionTransformer(cfg)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.head = ProjectionHead(
            cfg.embed_dim, s.head_hidden_dim, s.head_bottleneck_dim, s.out_dim
        )
        # the teacher starts as the student; the loop moves it after every step (`ema_pairs`)
        self.ema_encoder = EMATeacher(self.encoder)
        self.ema_head = EMATeacher(self.head)
        self.register_buffer("cls_center", torch.zeros(1, s.out_dim))
        self.register_buffer("patch_center", torch.zeros(1, 1, s.out_dim))
        self.progress = TrainingProgress()

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

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
        hidden = mask.binary
        student = self.head(self.encode_masked(images, hidden))
        teacher = self.ema_head(self.ema_encoder(images))  # the whole image, no gradient
        s, tt, p = self.settings, self.teacher_temp(), self.encoder.num_prefix_tokens
        cls = distillation_ce(student[:, 0], teacher[:, 0], self.cls_center, tt, s.student_temp)
        patches = distillation_ce(
            student[:, p:], teacher[:, p:], self.patch_center, tt, s.student_temp
        )
        loss = s.cls_weight * cls.mean() + s.patch_weight * masked_patch_loss(patches, hidden)
        if self.training:
            self.update_centers(teacher[:, 0], teacher[:, p:])
        return MethodOutput(loss, student[:, p:], mask)

    def encode_masked(self, images: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The student's tokens (B, 1 + N, D), hidden patches entering as the mask token."""
        return self.encoder.forward_mask_tokens(images, hidden, self.mask_token)

    def teacher_temp(self) -> float:
        """Linear warm-up from `warmup_teacher_temp` to `teacher_temp` over the first
        `teacher_temp_warmup` of training, then constant."""
        s = self.settings
        ramp = min(1.0, self.progress() / s.teacher_temp_warmup) if s.teacher_temp_warmup else 1.0
        return s.warmup_teacher_temp + ramp * (s.teacher_temp - s.warmup_teacher_temp)

    @torch.no_grad()
    def update_centers(self, cls_scores: torch.Tensor, patch_scores: torch.Tensor) -> None:
        m = self.settings.center_momentum
        self.cls_center.mul_(m).add_(cls_scores.float().mean(dim=0, keepdim=True), alpha=1 - m)
        batch_patch = patch_scores.float().mean(dim=(0, 1), keepdim=True)
        self.patch_center.mul_(m).add_(batch_patch, alpha=1 - m)

    def ema_pairs(self, progress: float) -> list[tuple[EMATeacher, nn.Module, float]]:
        """Teacher momentum: cosine from `teacher_momentum` at the start to 1 at the end."""
        start = self.settings.teacher_momentum
        momentum = 1 - (1 - start) * (math.cos(math.pi * progress) + 1) / 2
        return [(self.ema_encoder, self.encoder, momentum), (self.ema_head, self.head, momentum)]

    def reconstruct(self, images: torch.Tensor, mask: Mask) -> dict[str, torch.Tensor]:
        raise ConfigError("iBOT distils teacher scores, not pixels: there is no image to show")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images)
