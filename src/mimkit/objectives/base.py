"""The method contract: what every masked-modelling method is, and what the loop may rely on.

A method is composed, not inherited: an encoder (a plain ViT), a masking strategy (a
`MaskingConfig`), a decoder or head, and a target. Its `forward` reads as the algorithm in a
few named calls, with the mask drawn by a visible call (MAE's, in mae.py):

    mask = mask if mask is not None else self.draw_mask(len(images), images.device, generator)
    latent = self.encoder(images, mask.ids_keep)
    pred = self.decoder(latent, mask.ids_restore)
    loss = masked_mse(pred, self.target(images), mask.binary)

What the rest of mimkit relies on (`MaskedMethod`): `cfg` (the model geometry), `settings`
(the method's own config section), `encoder`, `draw_mask(batch, device, generator)` returning
data with `.select(rows)` (a global-batch draw is cut to one process's rows), `forward(images,
mask=None, generator=None)` returning a `MethodOutput`, `encode(images)` for features, and
`reconstructs_pixels` (whether `reconstruct(images, mask)` gives pictures).

What the next methods need, and where it lives:
- several inputs per sample (two views, several modalities): `images` may be a dict of
  tensors; the method names its inputs, the loop only moves and augments them; views a method
  cuts from the one image it is given (iBOT's crops) are drawn in `draw_mask` with the loop's
  generator, like a mask, and cut in `forward`;
- a frozen teacher (`FrozenTeacher`) or an EMA teacher (`EMATeacher`, moved by the loop's
  visible `update_teachers(method, progress)` after each optimiser step, through the method's
  `ema_pairs(progress)`); teachers move with the method (`.to()`) and never train under the
  optimiser; a frozen one is not saved with the student, an EMA one is (resume needs it);
- a learned mask generator (HPM): `draw_mask` returns the random draw and `forward` turns it
  into the mask from the method's own predictions, visibly;
- schedules over training (HPM's easy-to-hard masks, iBOT's teacher temperature): a
  `TrainingProgress` module, set by the same after-step call that moves EMA teachers;
- tokenizers that are not patches (point groups): the encoder takes tokens from whatever
  embedding the method owns; a `Mask` indexes tokens, not pixels.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from mimkit.errors import ConfigError
from mimkit.models.config import ModelConfig
from mimkit.models.vit import VisionTransformer


@dataclass
class MethodOutput:
    """What one forward pass of any method returns; the loop reads only `loss`."""

    loss: torch.Tensor  # scalar to minimise
    pred: torch.Tensor | None = None  # the method's predictions, in target space
    mask: Any = None  # what was hidden: a Mask, a FrequencyMask, ...
    predicted: torch.Tensor | None = None  # (B, M) ids `pred` covers, when not every patch


@dataclass
class MethodSettings:
    """Base of each method's own config section (`method:` in a run config)."""

    name: ClassVar[str]

    def check(self, model: ModelConfig) -> None:
        """Refuse settings that cannot work with this model, naming the field."""


class MaskedMethod(Protocol):
    cfg: ModelConfig
    settings: MethodSettings
    encoder: VisionTransformer
    reconstructs_pixels: bool

    def draw_mask(
        self, batch: int, device: torch.device | str, generator: torch.Generator | None
    ) -> Any: ...

    def __call__(
        self, images: Any, mask: Any = None, generator: torch.Generator | None = None
    ) -> MethodOutput: ...

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...


class FrozenTeacher(nn.Module):
    """A pretrained model a method learns from: moved with the method, never trained, always in
    eval mode, and left out of the method's state dict (student checkpoints stay small and load
    without it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.register_load_state_dict_pre_hook(_keep_teacher_weights)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)  # no drop-path, no statistics updates, ever

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        """Nothing: the teacher is not part of the student's weights."""
        return destination if destination is not None else OrderedDict()

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.model(*args, **kwargs)


def _keep_teacher_weights(teacher: FrozenTeacher, state_dict: dict, prefix: str, *args) -> None:
    """Loading a student's weights keeps the teacher it has: its keys are filled with its own."""
    state_dict.update(teacher.model.state_dict(prefix=f"{prefix}model."))


def check_teacher_fits(
    teacher_cfg: ModelConfig, cfg: ModelConfig, same_prefix: bool = True
) -> None:
    """A teacher must see the student's patches (the same patch grid) and, where the method
    compares whole token sequences (`same_prefix`), the same prefix tokens."""
    if tuple(teacher_cfg.grid_shape) != tuple(cfg.grid_shape):
        raise ConfigError(
            f"method.teacher: its patch grid {teacher_cfg.grid_shape} differs from the "
            f"student's {cfg.grid_shape}; use the same img_size and patch_size"
        )
    if same_prefix and teacher_cfg.cls_token != cfg.cls_token:
        raise ConfigError("method.teacher: teacher and student must agree on cls_token")


def patch_feature_teacher(
    settings: Any, cfg: ModelConfig, teacher: nn.Module | None
) -> tuple[Any, nn.Module | None]:
    """(settings, teacher encoder) of a student that matches a teacher's patch-token features
    (MaskAlign, MR-MAE): the teacher's grid checked against `cfg`, its width recorded in
    `teacher_dim`; without a teacher, the recorded width must be there."""
    encoder = getattr(teacher, "encoder", teacher)
    if encoder is not None:
        check_teacher_fits(encoder.cfg, cfg, same_prefix=False)  # patch tokens only
        settings = replace(settings, teacher_dim=encoder.cfg.embed_dim)
    require_teacher_width(settings)
    return settings, encoder


def require_teacher_width(settings: Any) -> None:
    """Without its teacher a student rebuilds from the recorded width (`method.teacher_dim`)."""
    if settings.teacher_dim is None:
        raise ConfigError(
            f"method.teacher {settings.teacher}: not found, and method.teacher_dim is not set"
        )


def teacher_missing(settings: Any) -> ConfigError:
    """The error of a student asked to train without the teacher it was built without."""
    return ConfigError(
        f"method.teacher {settings.teacher}: the teacher is needed to train, not found"
    )


def check_inputs(inputs: dict[str, int], model: ModelConfig, count: int) -> None:
    """The inputs a multi-input method names (`method.inputs`, name -> channels, in order):
    at least `count`, each with >= 1 channel, the first one's equal to model.in_chans (its
    encoder is the one exported and probed)."""
    if len(inputs) < count:
        raise ConfigError(
            f"method.inputs: expected {count} or more inputs (name: channels), got {inputs}"
        )
    if any(c < 1 for c in inputs.values()):
        raise ConfigError(f"method.inputs: every input needs >= 1 channel, got {inputs}")
    first, channels = next(iter(inputs.items()))
    if channels != model.in_chans:
        raise ConfigError(
            f"method.inputs: the first input {first!r} has {channels} channels but "
            f"model.in_chans is {model.in_chans}; they must agree"
        )
    if len(model.input_size) != 2:
        raise ConfigError("method.inputs: several inputs are for 2-D images")


@torch.no_grad()
def pooled_in_eval_mode(method: nn.Module, images: Any) -> torch.Tensor:
    """`method.pooled(images)` computed deterministically (eval mode, no gradients), the mode
    restored after: the `encode` of methods whose trainable feature path is `pooled`."""
    was_training = method.training
    method.eval()
    try:
        return method.pooled(images)
    finally:
        method.train(was_training)


def frozen(model: nn.Module | None) -> FrozenTeacher | None:
    """The teacher a method holds: frozen, or None when it was not found (rebuilt alone)."""
    return FrozenTeacher(model) if model is not None else None


class EMATeacher(nn.Module):
    """A teacher that follows its student: an exponential moving average of its weights
    (iBOT/DINO-style self-distillation), moved by `update(student, momentum)`. Unlike a frozen
    teacher it is saved with the method: resuming needs its weights exactly."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(student).eval().requires_grad_(False)

    def train(self, mode: bool = True) -> EMATeacher:
        return super().train(False)

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.model(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        ema = list(self.model.parameters())
        torch._foreach_mul_(ema, momentum)
        torch._foreach_add_(ema, [p.detach() for p in student.parameters()], alpha=1 - momentum)


def update_teachers(method: nn.Module, progress: float) -> None:
    """Move every EMA teacher of `method` toward its student, and tell the method how far
    training is; nothing for methods that have neither.

    `progress` is the share of training done (for momentum schedules); the method names its
    (teacher, student, momentum) triples in `ema_pairs(progress)`. A method whose objective
    follows a schedule of its own (HPM's easy-to-hard masks, iBOT's teacher temperature)
    keeps a `TrainingProgress` and is told here, after every optimiser step.
    """
    for teacher, student, momentum in getattr(method, "ema_pairs", lambda _: ())(progress):
        teacher.update(student, momentum)
    for module in method.modules():
        if isinstance(module, TrainingProgress):
            module.set(progress)


class TrainingProgress(nn.Module):
    """The share of training done, in [0, 1], as the loop last reported it (`update_teachers`).

    A buffer, so it is saved with the method and a resumed run continues its schedules where
    they were; a method built outside the loop starts at 0 (the schedules' start).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("share", torch.zeros(()))

    def set(self, progress: float) -> None:
        self.share.fill_(min(max(float(progress), 0.0), 1.0))

    def forward(self) -> float:
        return float(self.share)
