"""End-to-end fine-tuning of a pretrained encoder with a linear head (the MAE recipe).

AdamW with layer-wise learning-rate decay, drop-path, label smoothing, Mixup/CutMix, warmup +
cosine, cls or average pooling, optional new resolution (position embeddings resampled from the
checkpoint's grid). With a fine-tuned `teacher`, it is G2SD's specific distillation stage: the
student gets a second head that learns the teacher's predicted class (DeiT's hard
distillation, as the G2SD authors do), the two losses weigh half each, and at test time the
two heads' logits are averaged. It runs on the pretraining machinery: the same seeded, resumable data
source, device augmentation, autocast/GradScaler and atomic safetensors checkpoints, so
stopping and re-running with the same `out_dir` resumes where it stopped. Nothing here looks at
test data until the fixed budget is spent; the reported number is the last epoch's.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mimkit.config import RunConfig
from mimkit.data.sources import TrainSource, load_split
from mimkit.data.transforms import normalize
from mimkit.errors import ConfigError
from mimkit.eval.mixup import mix_batch, soft_cross_entropy
from mimkit.models.config import ModelConfig, resolve_model_config
from mimkit.models.pos_embed import adapt_pos_embed
from mimkit.models.vit import VisionTransformer, prefix_token_count
from mimkit.train.checkpoint import (
    MODEL_FILE,
    load_state_into,
    load_training_state,
    read_weights,
    save_checkpoint,
)
from mimkit.train.logging import MetricsWriter, progress_interval
from mimkit.train.loop import _restore_rng, _rng_state, prepare_batch
from mimkit.train.optim import layer_decay_param_groups, lr_at, scaled_lr, set_lr
from mimkit.train.runtime import autocast, pick_amp_dtype, pick_device

log = logging.getLogger(__name__)
SETTINGS_FILE = "finetune.json"


@dataclass
class FinetuneSettings:
    """The fine-tuning recipe; MAE's ViT defaults scaled for short runs."""

    epochs: int = 3
    batch_size: int = 128
    base_lr: float = 1e-3  # lr = base_lr * batch_size / 256
    min_lr: float = 1e-6
    warmup_epochs: float = 0.2
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.75
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    mixup: float = 0.0  # Beta(alpha, alpha); MAE uses 0.8 for 100-epoch runs
    cutmix: float = 0.0  # MAE uses 1.0 for 100-epoch runs
    mix_switch_prob: float = 0.5
    clip_grad: float | None = None
    img_size: int | None = None  # None: the checkpoint's resolution
    pool: str | None = None  # None: the checkpoint's model.pool
    train_limit: int | None = None
    teacher: str | None = None  # a fine-tuned classifier's checkpoint: G2SD specific stage
    seed: int = 0
    amp: str = "auto"
    device: str = "auto"
    max_steps: int | None = None  # stop early (tests, smoke runs); resumable
    progress: bool = True

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("finetune: epochs and batch_size must be >= 1")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"finetune: layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"finetune: label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        if self.pool not in (None, "cls", "avg"):
            raise ConfigError(f"finetune: pool must be cls or avg, got {self.pool!r}")


def _near_zero_head(dim: int, num_classes: int) -> nn.Linear:
    head = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(head.weight, std=2e-5)  # MAE: a near-zero head
    nn.init.zeros_(head.bias)
    return head


class ViTClassifier(nn.Module):
    """Encoder + linear head on the pooled tokens (`encoder.*`, `head.*`).

    With `distill_head`, a second head (`dist_head.*`) learns a teacher's predictions; the
    prediction is the mean of both heads' logits (DeiT).
    """

    def __init__(
        self, encoder: VisionTransformer, num_classes: int, distill_head: bool = False
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = _near_zero_head(encoder.cfg.embed_dim, num_classes)
        self.dist_head = (
            _near_zero_head(encoder.cfg.embed_dim, num_classes) if distill_head else None
        )

    def both_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class-head logits, distillation-head logits) from one encoder pass."""
        if self.dist_head is None:
            raise ValueError("this classifier has no distillation head")
        pooled = self.encoder.pool(self.encoder(x))
        return self.head(pooled), self.dist_head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dist_head is None:
            return self.head(self.encoder.pool(self.encoder(x)))
        return sum(self.both_heads(x)) / 2


def load_classifier(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[ViTClassifier, RunConfig]:
    """A fine-tuned classifier (a `mimkit eval finetune` checkpoint), frozen in eval mode."""
    from mimkit.train.checkpoint import load_config_file, resolve_checkpoint_dir

    folder = resolve_checkpoint_dir(path)
    cfg = load_config_file(folder)
    weights = read_weights(folder / MODEL_FILE)
    if "head.weight" not in weights:
        raise ConfigError(
            f"{folder}: not a fine-tuned classifier (no head.weight); the teacher of the "
            "specific stage is the checkpoint `mimkit eval finetune` writes"
        )
    model = ViTClassifier(
        VisionTransformer(resolve_model_config(cfg.model)),
        weights["head.weight"].shape[0],
        distill_head="dist_head.weight" in weights,
    )
    load_state_into(model, weights, str(folder / MODEL_FILE))
    return model.to(device).eval().requires_grad_(False), cfg


def finetune_model_config(base: ModelConfig, s: FinetuneSettings) -> ModelConfig:
    cfg = replace(base, drop_path_rate=s.drop_path)
    if s.img_size is not None:
        cfg = replace(cfg, img_size=s.img_size)
    if s.pool is not None:
        cfg = replace(cfg, pool=s.pool)
    return resolve_model_config(cfg)


def encoder_weights(
    weights: dict[str, torch.Tensor], old: ModelConfig, new: ModelConfig
) -> dict[str, torch.Tensor]:
    """The `encoder.*` part of a full checkpoint, its position table made for `new`'s grid
    (the fixed sin-cos table regenerated, a learned one interpolated)."""
    enc = {k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")}
    if "pos_embed" in enc:
        enc["pos_embed"] = adapt_pos_embed(
            enc["pos_embed"], old.pos_embed, old.grid_shape, new.grid_shape, prefix_token_count(old)
        )
    return enc


def build_classifier(
    base: ModelConfig,
    weights: dict[str, torch.Tensor] | None,
    num_classes: int,
    s: FinetuneSettings,
    where: str = "checkpoint",
) -> ViTClassifier:
    """A classifier at the fine-tuning resolution; pretrained when `weights` is given."""
    torch.manual_seed(s.seed)
    cfg = finetune_model_config(base, s)
    encoder = VisionTransformer(cfg)
    if weights is not None:
        load_state_into(encoder, encoder_weights(weights, base, cfg), where)
    return ViTClassifier(encoder, num_classes, distill_head=s.teacher is not None)


def resize_to(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Images at a model's resolution: bilinear resampling only when the size differs."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False)


@torch.no_grad()
def classifier_accuracy(
    model: ViTClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: list[float],
    std: list[float],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 512,
    progress: bool = True,
) -> float:
    """Top-1 on uint8 images, resized to the model's resolution when it differs."""
    model.eval()
    hw = model.encoder.cfg.image_hw
    correct = 0
    for start in tqdm(
        range(0, len(images), batch_size),
        desc="finetune test",
        disable=not progress,
        mininterval=progress_interval(),
    ):
        x = resize_to(normalize(images[start : start + batch_size].to(device), mean, std), hw)
        with autocast(device, amp_dtype):
            preds = model(x).argmax(1).cpu()
        correct += (preds == labels[start : start + batch_size]).sum().item()
    return correct / max(1, len(labels))


def _check_teacher_fits(
    path: str, teacher: ViTClassifier, teacher_run: RunConfig, cfg: RunConfig, num_classes: int
) -> None:
    """The teacher must read the student's inputs as it was trained to, and share its classes."""
    if teacher.head.out_features != num_classes:
        raise ConfigError(
            f"finetune: teacher {path} predicts {teacher.head.out_features} classes, "
            f"the data has {num_classes}"
        )
    seen = teacher_run.data
    if list(seen.mean) != list(cfg.data.mean) or list(seen.std) != list(cfg.data.std):
        raise ConfigError(
            f"finetune: teacher {path} was trained on inputs normalised with mean {seen.mean}, "
            f"std {seen.std}; the student uses {cfg.data.mean}, {cfg.data.std}"
        )
    if teacher.encoder.cfg.in_chans != cfg.model.in_chans:
        raise ConfigError(
            f"finetune: teacher {path} takes {teacher.encoder.cfg.in_chans} channels, "
            f"the student {cfg.model.in_chans}"
        )


def specific_distillation_loss(
    model: ViTClassifier, teacher: ViTClassifier, x: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """G2SD's specific stage: half the label loss, half cross-entropy to the teacher's class."""
    with torch.no_grad():
        teacher_class = teacher(resize_to(x, teacher.encoder.cfg.image_hw)).argmax(dim=1)
    logits, dist_logits = model.both_heads(x)
    return 0.5 * soft_cross_entropy(logits, targets) + 0.5 * F.cross_entropy(
        dist_logits.float(), teacher_class
    )


@dataclass
class FinetuneResult:
    top1: float
    steps: int
    epochs: int
    train_items: int
    test_items: int
    final_loss: float
    seconds: float
    checkpoint: Path


def _check_same_settings(out: Path, record: dict) -> None:
    path = out / SETTINGS_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        keep = ("progress", "max_steps", "device")
        a = {k: v for k, v in saved.items() if k not in keep}
        b = {k: v for k, v in record.items() if k not in keep}
        if a != b:
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ConfigError(
                f"{path}: this folder holds a fine-tune with other settings ({', '.join(changed)}); "
                "use another --out or the same settings to resume"
            )


def finetune(
    base_cfg: RunConfig,
    weights: dict[str, torch.Tensor] | None,
    s: FinetuneSettings,
    out_dir: str | Path,
    resume: bool = True,
) -> FinetuneResult:
    """Fine-tune (or, with `weights=None`, train from scratch) and score top-1 on test once."""
    s.check()
    start_time = time.perf_counter()
    device = pick_device(s.device)
    amp_dtype = pick_amp_dtype(s.amp, device)
    base = resolve_model_config(base_cfg.model)
    cfg = copy.deepcopy(base_cfg)
    cfg.model = finetune_model_config(base, s)
    cfg.data.limit = s.train_limit
    cfg.out_dir = str(out_dir)
    native_hw = base.image_hw

    source = TrainSource(cfg.data, base.in_chans, native_hw, s.seed)
    x_test, y_test = load_split(cfg.data, "test", base.in_chans, native_hw)
    num_classes = int(max(int(source.labels.max()), int(y_test.max()))) + 1
    if (source.labels < 0).any():
        raise ConfigError("finetune: the training data has unlabelled items")

    model = build_classifier(base, weights, num_classes, s).to(device)
    teacher = None
    if s.teacher:
        teacher, teacher_cfg = load_classifier(s.teacher, device)
        _check_teacher_fits(s.teacher, teacher, teacher_cfg, cfg, num_classes)
    steps_per_epoch = source.steps_per_epoch(s.batch_size)
    total_steps = steps_per_epoch * s.epochs
    warmup_steps = round(s.warmup_epochs * steps_per_epoch)
    peak_lr = scaled_lr(s.base_lr, s.batch_size)
    groups = layer_decay_param_groups(model, s.weight_decay, s.layer_decay, cfg.model.depth)
    optimizer = torch.optim.AdamW(
        groups, lr=peak_lr, betas=tuple(s.betas), fused=device.type == "cuda"
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    generator = torch.Generator(device).manual_seed(s.seed)

    out = Path(out_dir)
    ckpt = out / "checkpoint"
    record = dict(asdict(s), pretrained=weights is not None, num_classes=num_classes)
    record["betas"] = list(record["betas"])
    state = {"epoch": 0, "micro_step": 0, "step": 0}
    if resume and (ckpt / MODEL_FILE).is_file():
        _check_same_settings(out, record)
        load_state_into(model, read_weights(ckpt / MODEL_FILE), str(ckpt / MODEL_FILE))
        saved, rng = load_training_state(ckpt, optimizer)
        state.update({k: saved[k] for k in state if k in saved})
        if "scaler" in saved:
            scaler.load_state_dict(saved["scaler"])
        _restore_rng(generator, rng)
        log.info("fine-tune resumed from %s at step %d", ckpt, state["step"])
    out.mkdir(parents=True, exist_ok=True)
    (out / SETTINGS_FILE).write_text(json.dumps(record, indent=1))
    metrics = MetricsWriter(out / "metrics.jsonl")

    def save() -> None:
        extra = {"scaler": scaler.state_dict()} if scaler.is_enabled() else {}
        save_checkpoint(ckpt, model, cfg, optimizer, dict(state, **extra), _rng_state(generator))

    stop_at = min(total_steps, s.max_steps) if s.max_steps is not None else total_steps
    bar = tqdm(
        total=stop_at,
        initial=state["step"],
        unit="step",
        disable=not s.progress,
        desc="finetune",
        dynamic_ncols=True,
        mininterval=progress_interval(),
    )
    last_loss = math.nan
    model.train()
    while state["step"] < stop_at:
        for batch in source.batches(state["epoch"], s.batch_size, start_step=state["micro_step"]):
            if state["step"] >= stop_at:
                break
            x = prepare_batch(batch.images, cfg, device, generator)
            rng = np.random.default_rng([s.seed, state["step"]])
            x, targets = mix_batch(
                x,
                batch.labels.to(device),
                num_classes,
                rng,
                s.mixup,
                s.cutmix,
                s.mix_switch_prob,
                s.label_smoothing,
            )
            lr = lr_at(state["step"], total_steps, warmup_steps, peak_lr, s.min_lr)
            set_lr(optimizer, lr)
            with autocast(device, amp_dtype):
                if teacher is None:
                    loss = soft_cross_entropy(model(x), targets)
                else:
                    loss = specific_distillation_loss(model, teacher, x, targets)
            scaler.scale(loss).backward()
            if s.clip_grad is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            last_loss = loss.item()
            state["step"] += 1
            state["micro_step"] += 1
            bar.update(1)
            if state["step"] % 20 == 0 or state["step"] == stop_at:
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
                metrics.write(
                    event="finetune",
                    step=state["step"],
                    epoch=state["epoch"],
                    loss=last_loss,
                    lr=lr,
                )
        if state["micro_step"] >= steps_per_epoch:
            state["epoch"] += 1
            state["micro_step"] = 0
            if state["step"] < stop_at:
                save()
    bar.close()
    save()
    top1 = classifier_accuracy(
        model, x_test, y_test, cfg.data.mean, cfg.data.std, device, amp_dtype, progress=s.progress
    )
    metrics.write(event="test", step=state["step"], top1=top1)
    return FinetuneResult(
        top1,
        state["step"],
        state["epoch"],
        source.num_items,
        len(y_test),
        last_loss,
        time.perf_counter() - start_time,
        ckpt,
    )
