"""iBOT-style masked self-distillation (Zhou et al., 2022): the student, shown masked crops of
an image, matches what an EMA teacher, shown the same crops whole, says about every token.

1. Two global crops of each image (random resized crop and flip, drawn independently per crop),
   each with its own mask (iBOT: block-wise masks). The student encoder runs on the full
   sequence of each crop with its hidden patches replaced by a learned mask token (as SimMIM
   and BEiT); the teacher, an exponential moving average of the student (encoder and head),
   sees the crops unmasked.
2. One projection head (an MLP to a bottleneck, then cosine scores against `out_dim` learned
   prototypes; iBOT's shared head) turns every token of both into scores over the prototypes.
3. The teacher's scores are centred (a running mean of its own outputs over both crops, one for
   the cls token, one for patch tokens) and sharpened by a low temperature, warmed up from 0.04
   to 0.07; the student's are softened by 0.1. Each loss is the cross-entropy between the two.
4. The cls loss is crossed: the teacher's cls scores of crop A are the target of the student's
   cls token of crop B, and the other way round, averaged over the ordered pairs of different
   crops (no same-crop cls term). The patch loss is per crop: the student's tokens of a crop
   against the teacher's tokens of the same crop, on that crop's hidden patches only, averaged
   per image, then over crops (iBOT's `iBOTLoss`).

Where the crops come from. The loop hands a method one augmented, normalised view per sample
and knows nothing of views; it draws everything random through the method's `draw_mask`, with
its own seeded generator, for the whole global batch, and cuts the draw to each process's rows.
So iBOT's draw is its crops and masks together (`GlobalCrops`: an affine map and a mask per
crop), and `forward` cuts the crops out of the image it was given, on the device, by one
resampling. The contract's other road, a dict of views the loop would augment, needs the
loop to know how many views, of which scale, each method wants; a method's draw already
carries what is random about it. This keeps the loop and the contract as they are, and what
the loop promises of its draws: the same seed gives the same crops, a resumed run draws what
the straight run drew (the generator is in the checkpoint), and the crops of a sample do not
depend on the number of processes. The crops are cut from the loop's view, so the preset
turns the loop's crop off (`data.crop_scale: [1, 1]`, `data.crop_ratio: [1, 1]`,
`data.hflip: false`) and both crops are of the whole image, as in iBOT; with the loop's crop
on, both crops lie inside one shared crop.

`method.global_crops: 1` is the single-view form: one crop, its cls token against the
teacher's cls token of the same crop unmasked (what is lost is the invariance across crops);
more than 2 crops are compared pair by pair as iBOT does. Left out: the colour jitter, blur and
solarisation of iBOT's crops (grey 28x28 images; the loop offers none of them), multi-crop
local views, separate cls and patch teacher temperatures (iBOT: 0.04 and 0.07 after warm-up;
one schedule here), random mask ratios per image (the mask here is the configured strategy and
ratio for every crop), freezing the prototypes in the first epoch, and a cross-process
all-reduce of the centres (under DDP each process's buffers are broadcast from the first, so
the centre follows the first process's batches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mimkit.crops import crop_flip_theta, resample
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
    global_crops: int = 2  # crops of each image, the cls loss crossed between them; 1: one view
    global_crops_scale: list[float] = field(default_factory=lambda: [0.14, 1.0])  # iBOT's
    global_crops_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    global_crops_hflip: bool = True

    def check(self, model: ModelConfig) -> None:
        if not model.cls_token:
            raise ConfigError("model.cls_token: method 'ibot' distils the cls token; set it true")
        if len(model.input_size) != 2:
            raise ConfigError(
                f"model.img_size {model.img_size}: method 'ibot' draws 2-D crops of images; "
                "clips and volumes are not offered"
            )
        for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"method.{key} must be > 0, got {getattr(self, key)}")
        for key in ("center_momentum", "teacher_momentum"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"method.{key} must be in [0, 1), got {getattr(self, key)}")
        if not 0.0 <= self.teacher_temp_warmup <= 1.0:
            raise ConfigError(
                f"method.teacher_temp_warmup must be in [0, 1], got {self.teacher_temp_warmup}"
            )
        for key in ("out_dim", "head_hidden_dim", "head_bottleneck_dim", "global_crops"):
            if getattr(self, key) < 1:
                raise ConfigError(f"method.{key} must be >= 1, got {getattr(self, key)}")
        check_span("global_crops_scale", self.global_crops_scale, top=1.0)
        check_span("global_crops_ratio", self.global_crops_ratio, top=math.inf)


def check_span(key: str, values: list[float], top: float) -> None:
    """`method.<key>` is [min, max] with 0 < min <= max <= top."""
    low, high = (list(values) + [0.0, 0.0])[:2]
    if len(values) != 2 or not 0.0 < low <= high <= top:
        bound = f" <= {top:g}" if math.isfinite(top) else ""
        raise ConfigError(
            f"method.{key} must be [min, max] with 0 < min <= max{bound}, got {values}"
        )


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


def crossed_cls_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float,
) -> torch.Tensor:
    """Scalar: the student's cls scores (V, B, K) of each crop against the teacher's of every
    other crop, the mean over images of each ordered pair (v, q != v), then over the pairs
    (iBOT); with one crop (V = 1), against the teacher's of the same crop."""
    per_pair = distillation_ce(student[:, None], teacher[None], center, teacher_temp, student_temp)
    crops = len(student)  # per_pair[v, q]: (V, V, B), student crop v, teacher crop q
    crossed = ~torch.eye(crops, dtype=torch.bool, device=student.device)
    return per_pair.mean(dim=-1)[crossed if crops > 1 else ~crossed].mean()


def masked_patch_loss(per_patch: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Mean over images of the mean of `per_patch` (B, N) over each image's hidden patches."""
    return ((per_patch * hidden).sum(dim=1) / hidden.sum(dim=1).clamp(min=1.0)).mean()


@dataclass(frozen=True)
class GlobalCrops:
    """iBOT's draw for a batch: where each of V crops lies in each image and what it hides;
    `select` cuts it to a process's rows, as a `Mask`."""

    theta: torch.Tensor  # (V, B, 2, 3) affine crop-and-flip maps (`mimkit.crops`)
    masks: tuple[Mask, ...]  # V masks over the patches of each crop, (B, N) each

    def select(self, rows: slice | torch.Tensor) -> GlobalCrops:
        return GlobalCrops(self.theta[:, rows], tuple(m.select(rows) for m in self.masks))

    @property
    def hidden(self) -> torch.Tensor:
        """(V * B, N): 1 where hidden, crop-major (all images' first crop, then the second...)."""
        return torch.cat([m.binary for m in self.masks])


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
    ) -> GlobalCrops:
        """The crops of every image and a mask for each crop, drawn for the whole batch."""
        s, crops = self.settings, self.settings.global_crops
        theta = crop_flip_theta(
            crops * batch, self.cfg.image_hw, tuple(s.global_crops_scale),
            tuple(s.global_crops_ratio), s.global_crops_hflip, device, generator,
        )  # fmt: skip
        masks = self.masking.draw(crops * batch, self.cfg.grid_shape, device, generator)
        per_crop = (masks.select(slice(v * batch, (v + 1) * batch)) for v in range(crops))
        return GlobalCrops(theta.unflatten(0, (crops, batch)), tuple(per_crop))

    def forward(
        self,
        images: torch.Tensor,
        mask: GlobalCrops | None = None,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        crops = mask if mask is not None else self.draw_mask(len(images), images.device, generator)
        views = self.global_views(images, crops)  # (V * B, C, H, W), crop-major
        hidden = crops.hidden
        student = self.head(self.encode_masked(views, hidden))
        teacher = self.ema_head(self.ema_encoder(views))  # the whole crops, no gradient
        s, tt, p = self.settings, self.teacher_temp(), self.encoder.num_prefix_tokens
        by_crop = (len(crops.masks), len(images))
        cls = crossed_cls_loss(
            student[:, 0].unflatten(0, by_crop), teacher[:, 0].unflatten(0, by_crop),
            self.cls_center, tt, s.student_temp,
        )  # fmt: skip
        patches = distillation_ce(
            student[:, p:], teacher[:, p:], self.patch_center, tt, s.student_temp
        )  # every crop's tokens against the teacher's of the same crop
        loss = s.cls_weight * cls + s.patch_weight * masked_patch_loss(patches, hidden)
        if self.training:
            self.update_centers(teacher[:, 0], teacher[:, p:])
        return MethodOutput(loss, student[:, p:], crops)

    def global_views(self, images: torch.Tensor, crops: GlobalCrops) -> torch.Tensor:
        """The V crops of each image (B, C, H, W), cut and resized to the model's input size:
        (V * B, C, H, W), crop-major as `crops.hidden`."""
        repeated = images.repeat(len(crops.masks), *(1,) * (images.ndim - 1))
        return resample(repeated, crops.theta.flatten(0, 1), self.cfg.image_hw)

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
