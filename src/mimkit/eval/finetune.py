"""End-to-end fine-tuning of a pretrained encoder with a linear head (the MAE recipe).

AdamW with layer-wise learning-rate decay, drop-path, label smoothing, Mixup/CutMix, warmup +
cosine, cls or average pooling, optional new resolution (position embeddings resampled from the
checkpoint's grid). With a fine-tuned `teacher`, it is G2SD's specific distillation stage: the
student gets a second head that learns the teacher's predicted class (DeiT's hard
distillation, as the G2SD authors do), the two losses weigh half each, and at test time the
two heads' logits are averaged.

A checkpoint trained on samples with several inputs (`data.source: multi`: MultiMAE, CroCo,
CROMA) is fine-tuned through the feature path its kNN and linear probes read (`encode`, here
`pooled` with gradients): the whole method with a linear head (`InputsClassifier`), on the
same dict batches, each input normalised with its own statistics. What needs one image per
sample (Mixup/CutMix, RandAugment, random erasing, a test-time crop, a new resolution or
pooling, MAE's fc_norm head, a G2SD teacher) is off and refused in one line when asked for.

It is a configuration of the pretraining loop (`mimkit.train.loop`): a `TrainConfig` with the
fine-tuning defaults, a `FinetuneConfig` for what only fine-tuning has, and `ClassifierLoss`,
one more thing that returns a loss. So it has the same seeded, resumable data source, device
augmentation, non-finite guard, multi-process rows and atomic checkpoints: stopping and
re-running with the same `out_dir` resumes where it stopped. Nothing here looks at test data
until the fixed budget is spent; the reported number is the last epoch's.

With a `TokenReduction` (ToMe, DiffRate, IA-RED² from `mimkit.compress`), the encoder runs
with that reduction in training, in the head's probe start and in scoring, as those papers
fine-tune: the reduction is part of the model being trained, not applied afterwards.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mimkit.config import RunConfig, TrainConfig
from mimkit.data.config import DataConfig
from mimkit.data.multi import Inputs, sample_count
from mimkit.data.sources import Batch, TrainSource, load_split
from mimkit.data.transforms import denormalize, normalize
from mimkit.errors import ConfigError
from mimkit.eval.augment import rand_augment, random_erasing
from mimkit.eval.features import feature_stats
from mimkit.eval.head_init import probe_initialised_head
from mimkit.eval.mixup import mix_batch, soft_cross_entropy
from mimkit.models.config import ModelConfig, resolve_model_config
from mimkit.models.pos_embed import adapt_pos_embed
from mimkit.models.vit import PatchEmbed, VisionTransformer, prefix_token_count
from mimkit.train.checkpoint import (
    MODEL_FILE,
    Checkpointer,
    load_config_file,
    load_state_into,
    method_from_config,
    read_weights,
    resolve_checkpoint_dir,
)
from mimkit.train.distributed import DistContext, init_distributed, shutdown_distributed
from mimkit.train.lock import run_lock, stop_signals
from mimkit.train.logging import MetricsWriter, progress_interval
from mimkit.train.loop import Rows, assemble, train_loop
from mimkit.train.optim import (
    decays,
    encoders_with_layer_ids,
    layer_decay_param_groups,
    no_weight_decay_names,
)
from mimkit.train.runtime import autocast, pick_device

log = logging.getLogger(__name__)
SETTINGS_FILE = "finetune.json"


#: The fine-tuning recipe's train section: MAE's ViT defaults scaled for short runs. Fields of
#: `TrainConfig` not named here keep its defaults (max_nonfinite, log_every, save_every, ...).
FINETUNE_TRAIN_DEFAULTS = dict(
    epochs=3,
    batch_size=None,  # None: from the dataset size (`auto_batch_size`)
    base_lr=None,  # lr = base_lr * batch_size / 256; None: `auto_base_lr`
    min_lr=1e-6,
    warmup_epochs=0.2,
    weight_decay=0.05,
    betas=[0.9, 0.999],
    compile=False,  # as before: runs are short and compile time would dominate them
)
#: The train fields a fine-tune is set by (flags of `mimkit eval finetune`, `finetune.json`).
TRAIN_SETTINGS = (
    "epochs",
    "batch_size",
    "base_lr",
    "min_lr",
    "warmup_epochs",
    "weight_decay",
    "betas",
    "clip_grad",
    "seed",
    "amp",
    "device",
    "max_steps",
    "progress",
    "max_nonfinite",
    "log_every",
)
#: Settings that may change between a run and its resumption.
RESUMABLE_CHANGES = ("progress", "max_steps", "device", "max_nonfinite", "log_every")


def finetune_train_config(**changes) -> TrainConfig:
    """The train section of a fine-tune: the fine-tuning defaults, then `changes`."""
    return TrainConfig(**{**FINETUNE_TRAIN_DEFAULTS, **changes})


@dataclass
class FinetuneConfig:
    """What only fine-tuning has: the classifier, its augmentation, regularisers and teacher.

    Fields left at None are chosen by `resolve_recipe` from the image size, the dataset size,
    the run length and whether the encoder is pretrained (see `RECIPES`).
    """

    recipe: str = "auto"  # auto: sized to the data; mae: MAE's main_finetune.py defaults
    layer_decay: float | None = None  # auto: 0.75 pretrained, 1.0 from random init
    drop_path: float | None = None  # auto: 0.1 for runs of >= 20 epochs, else 0
    label_smoothing: float = 0.1
    mixup: float = 0.0  # Beta(alpha, alpha); MAE's README uses 0.8 for 100-epoch runs
    cutmix: float = 0.0  # MAE's README uses 1.0 for 100-epoch runs
    mix_switch_prob: float = 0.5
    crop_scale: list[float] | None = None  # train random-resized-crop area; auto: by image side
    crop_ratio: list[float] | None = None  # auto: [3/4, 4/3]
    hflip: bool | None = None  # auto: the checkpoint's data.hflip
    randaug_ops: int | None = None  # RandAugment operations per image; auto: 2 for long runs
    randaug_magnitude: float = 9.0
    erase_prob: float | None = None  # random erasing; auto: 0.25 for long runs
    test_crop: float | None = None  # test: resize to side / test_crop, centre-crop; auto: by crop
    head: str | None = None  # fc_norm (MAE: LayerNorm on the mean of pre-norm tokens) | norm
    learn_pos: bool = True  # the position table is trained (MAE fine-tunes timm's parameter)
    head_init: str | None = None  # probe (LP-FT: fitted on frozen features) | zero; auto: probe
    img_size: int | None = None  # None: the checkpoint's resolution
    pool: str | None = None  # None: the checkpoint's model.pool
    train_limit: int | None = None
    teacher: str | None = None  # a fine-tuned classifier's checkpoint: G2SD specific stage

    def check(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(
                f"finetune: recipe must be one of {sorted(RECIPES)}, got {self.recipe!r}"
            )
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"finetune: layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(
                f"finetune: label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        if self.pool not in (None, "cls", "avg"):
            raise ConfigError(f"finetune: pool must be cls or avg, got {self.pool!r}")
        if self.head not in (None, "fc_norm", "norm"):
            raise ConfigError(f"finetune: head must be fc_norm or norm, got {self.head!r}")
        if self.head_init not in (None, "probe", "zero"):
            raise ConfigError(f"finetune: head_init must be probe or zero, got {self.head_init!r}")
        if self.crop_scale is not None and not (
            len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1
        ):
            raise ConfigError(
                f"finetune: crop_scale must be two numbers 0 < lo <= hi <= 1, got {self.crop_scale}"
            )
        if self.test_crop is not None and not 0 < self.test_crop <= 1:
            raise ConfigError(f"finetune: test_crop must be in (0, 1], got {self.test_crop}")


#: MAE's `main_finetune.py` defaults (facebookresearch/mae), train section and the rest. Its
#: RandAugment is timm's rand-m9-mstd0.5-inc1, random erasing 0.25 in pixel mode, the test image
#: resized to 256/224 of the side and centre-cropped, `global_pool` (fc_norm) on.
MAE_TRAIN = dict(
    epochs=50, batch_size=64, base_lr=1e-3, min_lr=1e-6, warmup_epochs=5, weight_decay=0.05
)
MAE_FINETUNE = dict(
    layer_decay=0.75, drop_path=0.1, label_smoothing=0.1, mixup=0.0, cutmix=0.0,
    crop_scale=[0.08, 1.0], crop_ratio=[3 / 4, 4 / 3], hflip=True, randaug_ops=2,
    randaug_magnitude=9.0, erase_prob=0.25, test_crop=224 / 256, head="fc_norm", learn_pos=True,
    head_init="zero",
)  # fmt: skip
RECIPES = ("auto", "mae")
#: Below this many epochs a run underfits (train accuracy ~ test accuracy, measured on
#: Fashion-MNIST): the auto recipe then leaves out the regularisers made for long runs.
LONG_RUN_EPOCHS = 20


def auto_batch_size(num_items: int) -> int:
    """Images per step for `num_items` training items: the power of two nearest items / 128,
    in [16, 128], so a short run on a small set still takes a few hundred steps."""
    target = max(16, min(128, num_items // 128))
    return 1 << int(round(math.log2(target)))


def auto_base_lr(epochs: float) -> float:
    """MAE's 1e-3 for long runs; 4e-3 for short ones, where a near-zero head and layer decay
    at 1e-3 barely move in a few hundred steps (measured on Fashion-MNIST, 5k labels, 78 steps:
    0.429 at 1e-3, 0.582 at 4e-3; docs/results/fashion-mnist.md)."""
    return 1e-3 if epochs >= LONG_RUN_EPOCHS else 4e-3


#: Images up to this side are "small": no crop, and no long-run regularisers (see below).
SMALL_SIDE = 32


def auto_crop_scale(side: int) -> list[float]:
    """Random-resized-crop area range for images of `side` pixels: none up to 32 pixels (a
    crop of a 28-pixel item loses the object; measured: 39 % vs 60 % at 78 steps from scratch),
    mild up to 96, MAE's 0.08-1 above."""
    if side <= SMALL_SIDE:
        return [1.0, 1.0]
    if side <= 96:
        return [0.5, 1.0]
    return [0.08, 1.0]


def resolve_recipe(
    ft: FinetuneConfig, train: TrainConfig, side: int, pretrained: bool, hflip: bool
) -> FinetuneConfig:
    """Every None field of `ft` chosen (the recipe's value, else the data-sized default)."""
    if ft.recipe == "mae":
        given = {f.name: getattr(ft, f.name) for f in fields(ft)}
        ft = replace(ft, **{k: v for k, v in MAE_FINETUNE.items() if given.get(k) is None})
    # MAE's long-run regularisers (drop path, RandAugment, random erasing) only above 32 px:
    # on 28x28 Fashion-MNIST they kept a 16-token ViT underfit through 20 epochs (train 89.8%,
    # test 88.15%, against 94.5% / 90.64% without them; docs/results/fashion-mnist-long.md)
    long_run = train.epochs >= LONG_RUN_EPOCHS and side > SMALL_SIDE
    crop_scale = ft.crop_scale if ft.crop_scale is not None else auto_crop_scale(side)
    return replace(
        ft,
        layer_decay=ft.layer_decay if ft.layer_decay is not None else (0.75 if pretrained else 1.0),
        drop_path=ft.drop_path if ft.drop_path is not None else (0.1 if long_run else 0.0),
        crop_scale=list(crop_scale),
        crop_ratio=list(ft.crop_ratio) if ft.crop_ratio is not None else [3 / 4, 4 / 3],
        hflip=hflip if ft.hflip is None else ft.hflip,
        randaug_ops=ft.randaug_ops if ft.randaug_ops is not None else (2 if long_run else 0),
        erase_prob=ft.erase_prob if ft.erase_prob is not None else (0.25 if long_run else 0.0),
        test_crop=ft.test_crop
        if ft.test_crop is not None
        else (1.0 if crop_scale[0] >= 1.0 else 224 / 256),
        head_init=ft.head_init or "probe",
    )


class FinetuneFlag(NamedTuple):
    name: str
    default: Any


def finetune_flags() -> list[FinetuneFlag]:
    """Every fine-tune setting with its default, train fields first (for the command line)."""
    train = finetune_train_config()
    return [FinetuneFlag(n, getattr(train, n)) for n in TRAIN_SETTINGS] + [
        FinetuneFlag(f.name, f.default) for f in fields(FinetuneConfig)
    ]


def split_settings(values: dict[str, Any]) -> tuple[TrainConfig, FinetuneConfig]:
    """Flat settings (command-line flags) -> (train section, fine-tune section); with
    `recipe: mae`, MAE's train settings fill in those not given."""
    own = {f.name for f in fields(FinetuneConfig)}
    unknown = sorted(set(values) - own - set(TRAIN_SETTINGS))
    if unknown:
        raise ConfigError(f"finetune: unknown settings {unknown}")
    train = {k: v for k, v in values.items() if k in TRAIN_SETTINGS}
    if "betas" in train:
        train["betas"] = list(train["betas"])
    if values.get("recipe") == "mae":
        train = {**MAE_TRAIN, **train}
    ft = FinetuneConfig(**{k: v for k, v in values.items() if k in own})
    return finetune_train_config(**train), ft


def settings_record(train: TrainConfig, ft: FinetuneConfig) -> dict[str, Any]:
    """The flat record of a fine-tune's settings (finetune.json, eval_finetune.json)."""
    record = {name: getattr(train, name) for name in TRAIN_SETTINGS}
    record["betas"] = list(record["betas"])
    return {**record, **asdict(ft)}


def plan_line(train: TrainConfig, ft: FinetuneConfig, num_items: int) -> str:
    """The settings a fine-tune runs with, given or chosen from the data and the run length, on
    one line: printed before training so a user sees what the recipe picked."""
    peak = train.base_lr * train.batch_size / 256
    low, high = ft.crop_scale
    augment = [f"crop {low:g}-{high:g}" if low < 1.0 else "no crop"]
    augment += ["flip"] if ft.hflip else []
    augment += [f"RandAugment {ft.randaug_ops}x{ft.randaug_magnitude:g}"] if ft.randaug_ops else []
    augment += [f"erasing {ft.erase_prob:g}"] if ft.erase_prob else []
    augment += [f"mixup {ft.mixup:g}"] if ft.mixup else []
    augment += [f"cutmix {ft.cutmix:g}"] if ft.cutmix else []
    return (
        f"fine-tune plan ({ft.recipe} recipe): {num_items} training items, {train.epochs:g} "
        f"epoch(s), batch {train.batch_size}, base lr {train.base_lr:g} (peak {peak:.3g}), "
        f"layer decay {ft.layer_decay:g}, drop path {ft.drop_path:g}, label smoothing "
        f"{ft.label_smoothing:g}, {', '.join(augment)}, head {ft.head} "
        f"(starts as {'a linear probe' if ft.head_init == 'probe' else 'zero'}), amp {train.amp}"
    )


def _near_zero_head(dim: int, num_classes: int) -> nn.Linear:
    head = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(head.weight, std=2e-5)  # MAE: a near-zero head
    nn.init.zeros_(head.bias)
    return head


def learnable_position_table(encoder: VisionTransformer) -> VisionTransformer:
    """The encoder with its position table as a trained parameter (MAE fine-tunes timm's
    `pos_embed` parameter; pretraining keeps the sin-cos table fixed). Same state-dict key."""
    if "pos_embed" in dict(encoder.named_buffers(recurse=False)):
        table = encoder.pos_embed.detach().clone()
        del encoder.pos_embed
        encoder.pos_embed = nn.Parameter(table)
    return encoder


@dataclass(frozen=True)
class TokenReduction:
    """A token-reducing forward pass of an encoder, for fine-tuning with it in the loop.

    `tokens(encoder, images)` returns the encoder's final tokens (after `encoder.norm`, prefix
    tokens first) and each token's size, the patches it stands for (None: one each), and must
    keep gradients. `record` says what it is (method and schedule) for `finetune.json`.
    """

    tokens: Callable[[VisionTransformer, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
    record: dict[str, Any]


def size_weighted_mean(tokens: torch.Tensor, size: torch.Tensor | None) -> torch.Tensor:
    """Mean over tokens (B, N, D), each weighted by the patches it stands for (B, N, 1)."""
    if size is None:
        return tokens.mean(dim=1)
    return (tokens * size).sum(1) / size.sum(1)


class ViTClassifier(nn.Module):
    """Encoder + linear head on the pooled tokens (`encoder.*`, `head.*`).

    `head="fc_norm"` is MAE's `global_pool` head: the encoder's final norm is dropped, the
    pre-norm patch tokens are averaged and a fresh LayerNorm (`fc_norm.*`) normalises the mean.
    `head="norm"` pools the encoder's normalised tokens per its `cfg.pool`.
    With `distill_head`, a second head (`dist_head.*`) learns a teacher's predictions; the
    prediction is the mean of both heads' logits (DeiT).
    `reduction` (a `TokenReduction`, not a module: nothing of it is trained or saved) replaces
    the encoder's forward pass; average pooling then weighs each token by its size.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        num_classes: int,
        distill_head: bool = False,
        head: str = "norm",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        dim = encoder.cfg.embed_dim
        self.fc_norm = None
        if head == "fc_norm":
            self.encoder.norm = nn.Identity()  # the blocks' output stays pre-norm
            self.fc_norm = nn.LayerNorm(dim, eps=encoder.cfg.layer_norm_eps)
        self.head = _near_zero_head(dim, num_classes)
        self.dist_head = _near_zero_head(dim, num_classes) if distill_head else None
        self.reduction: TokenReduction | None = None

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        if self.reduction is None:
            tokens, size = self.encoder(x), None
        else:
            tokens, size = self.reduction.tokens(self.encoder, x)
        prefix = self.encoder.num_prefix_tokens
        if self.fc_norm is not None:
            return self.fc_norm(size_weighted_mean(tokens[:, prefix:], _patches(size, prefix)))
        if self.encoder.cfg.pool == "avg" and size is not None:
            return size_weighted_mean(tokens[:, prefix:], size[:, prefix:])
        return self.encoder.pool(tokens)

    def both_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class-head logits, distillation-head logits) from one encoder pass."""
        if self.dist_head is None:
            raise ValueError("this classifier has no distillation head")
        pooled = self.pooled(x)
        return self.head(pooled), self.dist_head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dist_head is None:
            return self.head(self.pooled(x))
        return sum(self.both_heads(x)) / 2


def _patches(size: torch.Tensor | None, prefix: int) -> torch.Tensor | None:
    return None if size is None else size[:, prefix:]


class InputsClassifier(nn.Module):
    """A method whose samples have several inputs (`data.source: multi`) + a linear head on its
    features (`method.*`, `head.*`): `method.pooled`, the path its `encode` (kNN, linear
    probe) takes, trained end to end. Parts the features do not reach (decoders, pretraining
    heads) stay in the checkpoint, frozen (`freeze_unused`)."""

    dist_head = None  # no G2SD teacher for several inputs

    def __init__(self, method: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.method = method
        self.head = _near_zero_head(method.encoder.cfg.embed_dim, num_classes)

    @property
    def encoder(self) -> VisionTransformer:
        """The method's encoder: its config gives the width and resolution."""
        return self.method.encoder

    def pooled(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.method.pooled(x)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.pooled(x))


def freeze_unused(model: InputsClassifier, data: DataConfig) -> None:
    """Freeze the method's parameters its features of `data.inputs` do not reach (found by one
    backward pass from a zero batch in eval mode), so the optimiser and DDP see only what the
    loss trains; refuse in one line inputs the method cannot take."""
    method, hw = model.method, model.encoder.cfg.image_hw
    probe = {name: torch.zeros(1, spec.channels, *hw) for name, spec in data.inputs.items()}
    was_training = method.training
    method.eval()
    try:
        method.pooled(probe).sum().backward()
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(
            f"finetune: data.inputs {sorted(data.inputs)} do not fit the checkpoint's method "
            f"({str(exc).splitlines()[0]})"
        ) from None
    finally:
        method.train(was_training)
    for param in method.parameters():
        if param.grad is None:
            param.requires_grad_(False)
        param.grad = None


def inputs_param_groups(
    model: InputsClassifier, weight_decay: float, layer_decay: float
) -> list[dict]:
    """Parameter groups of an `InputsClassifier` with layer-wise lr decay over each encoder of
    its method by that encoder's own depth (embeddings `layer_decay ** (depth + 1)`, block i
    `layer_decay ** (depth - i)`, as `layer_decay_param_groups`); patch embeddings outside an
    encoder (MultiMAE's adapters) at the main encoder's embedding rate; the rest (CROMA's
    fusion encoder, the head) at the full rate. Weight decay split as in `param_groups`."""
    encoders = encoders_with_layer_ids(model)
    top = len(model.encoder.blocks) + 1
    embeddings = [n for n, m in model.named_modules() if isinstance(m, PatchEmbed)]
    exempt = no_weight_decay_names(model)
    groups: dict[tuple[float, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        where = next((w for w in encoders if name.startswith(w + ".")), None)
        if where is not None:
            encoder = encoders[where]
            layer = encoder.layer_id(name.removeprefix(where + "."))
            scale = layer_decay ** (len(encoder.blocks) + 1 - layer)
        elif any(name.startswith(e + ".") for e in embeddings):
            scale = layer_decay**top
        else:
            scale = 1.0
        no_decay = not decays(name, param, exempt)
        group = groups.setdefault(
            (scale, no_decay),
            {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale},
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def build_inputs_classifier(
    cfg: RunConfig,
    weights: dict[str, torch.Tensor] | None,
    num_classes: int,
    ft: FinetuneConfig,
    seed: int = 0,
    where: str = "checkpoint",
) -> InputsClassifier:
    """The method of `cfg` (a run on samples with several inputs) with a linear head;
    pretrained when `weights` (a full checkpoint's) are given."""
    torch.manual_seed(seed)
    method = method_from_config(cfg)
    if weights is not None:
        load_state_into(method, weights, where)
    if ft.learn_pos:
        for module in method.modules():
            if isinstance(module, VisionTransformer):
                learnable_position_table(module)
    model = InputsClassifier(method, num_classes)
    freeze_unused(model, cfg.data)
    return model


def inputs_settings(ft: FinetuneConfig, model: ModelConfig) -> FinetuneConfig:
    """`ft` for samples with several inputs: what needs one image per sample off when left to
    the recipe, refused in one line when asked for (see the module docstring)."""
    asked = [
        name
        for name, value in (
            ("mixup", ft.mixup), ("cutmix", ft.cutmix), ("randaug_ops", ft.randaug_ops),
            ("erase_prob", ft.erase_prob), ("teacher", ft.teacher),
        )
        if value
    ]  # fmt: skip
    if ft.img_size is not None and (ft.img_size, ft.img_size) != tuple(model.image_hw):
        asked.append("img_size")
    if ft.pool not in (None, model.pool):
        asked.append("pool")
    if ft.head not in (None, "norm"):
        asked.append("head")
    if ft.test_crop not in (None, 1.0):
        asked.append("test_crop")
    if ft.head_init == "probe":
        asked.append("head_init")
    if asked:
        raise ConfigError(
            f"finetune: {', '.join(asked)}: not available for a checkpoint trained on samples "
            "with several inputs (data.source: multi); it is fine-tuned on its dict batches "
            f"through its own features (pool {model.pool!r}, {model.image_hw[0]}x"
            f"{model.image_hw[1]}, head norm), with crop and flip as augmentation"
        )
    return replace(
        ft, randaug_ops=0, erase_prob=0.0, test_crop=1.0, head="norm", img_size=None,
        head_init="zero",
    )  # fmt: skip


def load_classifier(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[ViTClassifier, RunConfig]:
    """A fine-tuned classifier (a `mimkit eval finetune` checkpoint), frozen in eval mode."""
    folder = resolve_checkpoint_dir(path)
    cfg = load_config_file(folder)
    weights = read_weights(folder / MODEL_FILE)
    if "head.weight" not in weights:
        raise ConfigError(
            f"{folder}: not a fine-tuned classifier (no head.weight); the teacher of the "
            "specific stage is the checkpoint `mimkit eval finetune` writes"
        )
    if any(k.startswith("method.") for k in weights):  # several inputs per sample
        model = InputsClassifier(method_from_config(cfg), weights["head.weight"].shape[0])
        load_state_into(model, weights, str(folder / MODEL_FILE))
        return model.to(device).eval().requires_grad_(False), cfg
    encoder = VisionTransformer(resolve_model_config(cfg.model))
    if "pos_embed" in weights and "pos_embed" not in encoder.state_dict():
        raise ConfigError(f"{folder}: its position table does not fit its model config")
    model = ViTClassifier(
        encoder,
        weights["head.weight"].shape[0],
        distill_head="dist_head.weight" in weights,
        head="fc_norm" if "fc_norm.weight" in weights else "norm",
    )
    load_state_into(model, weights, str(folder / MODEL_FILE))
    return model.to(device).eval().requires_grad_(False), cfg


def finetune_model_config(base: ModelConfig, ft: FinetuneConfig) -> ModelConfig:
    cfg = replace(base, drop_path_rate=ft.drop_path or 0.0)
    if ft.img_size is not None:
        cfg = replace(cfg, img_size=ft.img_size)
    if ft.pool is not None:
        cfg = replace(cfg, pool=ft.pool)
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
    ft: FinetuneConfig,
    seed: int = 0,
    where: str = "checkpoint",
) -> ViTClassifier:
    """A classifier at the fine-tuning resolution; pretrained when `weights` is given."""
    torch.manual_seed(seed)
    cfg = finetune_model_config(base, ft)
    encoder = VisionTransformer(cfg)
    if weights is not None:
        load_state_into(encoder, encoder_weights(weights, base, cfg), where)
    if ft.learn_pos:
        encoder = learnable_position_table(encoder)
    return ViTClassifier(
        encoder, num_classes, distill_head=ft.teacher is not None, head=classifier_head(cfg, ft)
    )


def classifier_head(cfg: ModelConfig, ft: FinetuneConfig) -> str:
    """fc_norm (MAE's head) for average pooling unless asked otherwise; the cls token keeps the
    encoder's final norm, as MAE's `--cls_token`."""
    if cfg.pool != "avg":
        return "norm"
    return ft.head or "fc_norm"


def resize_to(x: torch.Tensor, hw: tuple[int, int], crop: float = 1.0) -> torch.Tensor:
    """Images at a model's resolution: bilinear resampling only when the size differs. With
    `crop` < 1, MAE's test transform: resize to `hw / crop`, then the centre `hw`."""
    if crop < 1.0:
        big = (math.floor(hw[0] / crop), math.floor(hw[1] / crop))
        x = resize_to(x, big)
        top, left = (big[0] - hw[0]) // 2, (big[1] - hw[1]) // 2
        return x[..., top : top + hw[0], left : left + hw[1]]
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False)


@torch.no_grad()
def classifier_accuracy(
    model: ViTClassifier | InputsClassifier,
    images: torch.Tensor | dict[str, torch.Tensor],
    labels: torch.Tensor,
    mean: list[float] | dict[str, list[float]],
    std: list[float] | dict[str, list[float]],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 512,
    progress: bool = True,
    crop: float = 1.0,
) -> float:
    """Top-1 on uint8 images, resized to the model's resolution when it differs (see
    `resize_to` for `crop`). Several inputs per sample: `images` a dict, `mean`/`std` dicts
    by input (`feature_stats`), each input at the model's size already."""
    model.eval()
    hw = model.encoder.cfg.image_hw
    correct = 0
    for start in tqdm(
        range(0, sample_count(images), batch_size),
        desc="finetune test",
        disable=not progress,
        mininterval=progress_interval(),
    ):
        if isinstance(images, dict):  # several inputs: each with its own statistics
            rows = Inputs(images)[start : start + batch_size].to(device)
            x = Inputs({k: normalize(v, mean[k], std[k]) for k, v in rows.items()})
        else:
            x = normalize(images[start : start + batch_size].to(device), mean, std)
            x = resize_to(x, hw, crop)
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
class ClassifierOutput:
    loss: torch.Tensor


class ClassifierLoss(nn.Module):
    """A classifier as one more thing that returns a loss: `forward(x, targets).loss`.

    Soft cross-entropy to the (mixed, smoothed) targets; with a frozen `teacher`, G2SD's
    specific distillation loss. The teacher is kept out of the module tree (a tuple), so it is
    neither trained, wrapped by DDP/FSDP, nor saved with the classifier.
    """

    def __init__(self, classifier: ViTClassifier, teacher: ViTClassifier | None = None) -> None:
        super().__init__()
        self.classifier = classifier
        self._teacher = (teacher,)

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> ClassifierOutput:
        teacher = self._teacher[0]
        if teacher is None:
            return ClassifierOutput(soft_cross_entropy(self.classifier(x), targets))
        return ClassifierOutput(specific_distillation_loss(self.classifier, teacher, x, targets))


@dataclass
class MixedLabelLoss:
    """Fine-tuning's batch loss: Mixup/CutMix and label smoothing, then the classifier's loss.

    The mix of micro-batch `draw` comes from a NumPy generator seeded by (seed, draw), so a
    resumed run mixes exactly as a straight one. Each process mixes its own rows.
    """

    forward: Callable  # the (wrapped) ClassifierLoss
    num_classes: int
    ft: FinetuneConfig
    seed: int
    device: torch.device
    amp_dtype: torch.dtype | None

    mean: list[float] | None = None  # the data's statistics, for RandAugment in pixel space
    std: list[float] | None = None

    def __call__(self, x: torch.Tensor, batch: Batch, rows: Rows, draw: int) -> torch.Tensor:
        ft, rng = self.ft, np.random.default_rng([self.seed, draw])
        labels = batch.labels.to(x.device)
        x = self.augment(x, draw)
        x, targets = mix_batch(
            x, labels, self.num_classes, rng, ft.mixup, ft.cutmix, ft.mix_switch_prob,
            ft.label_smoothing,
        )  # fmt: skip
        with autocast(self.device, self.amp_dtype):
            return self.forward(x, targets).loss

    def augment(self, x: torch.Tensor, draw: int) -> torch.Tensor:
        """RandAugment in [0, 1] pixel space, then random erasing on the normalised batch (the
        order of timm's transforms), drawn from a generator seeded by (seed, draw)."""
        ft = self.ft
        if not ft.randaug_ops and not ft.erase_prob:
            return x
        gen = torch.Generator(device=x.device).manual_seed(self.seed * 1_000_003 + draw)
        if ft.randaug_ops:
            pixels = rand_augment(
                denormalize(x, self.mean, self.std), ft.randaug_ops, ft.randaug_magnitude,
                generator=gen,
            )  # fmt: skip
            x = normalize(pixels * 255.0, self.mean, self.std)
        return random_erasing(x, ft.erase_prob or 0.0, generator=gen)


@dataclass
class FinetuneResult:
    top1: float
    train_top1: float  # un-augmented, on (at most 10,000 of) the training items: fit vs. test
    steps: int
    epochs: int
    train_items: int
    test_items: int
    final_loss: float
    seconds: float
    checkpoint: Path
    nonfinite_skipped: int = 0
    settings: dict[str, Any] | None = None  # every setting as resolved for this run


def _check_same_settings(out: Path, record: dict) -> None:
    path = out / SETTINGS_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        a = {k: v for k, v in saved.items() if k not in RESUMABLE_CHANGES}
        b = {k: v for k, v in record.items() if k not in RESUMABLE_CHANGES}
        if a != b:
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ConfigError(
                f"{path}: this folder holds a fine-tune with other settings ({', '.join(changed)}); "
                "use another --out or the same settings to resume"
            )


def _labelled_data(
    cfg: RunConfig, base: ModelConfig
) -> tuple[TrainSource, torch.Tensor, torch.Tensor, int]:
    """(training source, test images, test labels, number of classes), at the native size."""
    source = TrainSource(cfg.data, base.in_chans, base.image_hw, cfg.train.seed)
    x_test, y_test = load_split(cfg.data, "test", base.in_chans, base.image_hw)
    if (source.labels < 0).any():
        raise ConfigError("finetune: the training data has unlabelled items")
    num_classes = int(max(int(source.labels.max()), int(y_test.max()))) + 1
    return source, x_test, y_test, num_classes


def finetune(
    base_cfg: RunConfig,
    weights: dict[str, torch.Tensor] | None,
    train: TrainConfig,
    ft: FinetuneConfig,
    out_dir: str | Path,
    resume: bool = True,
    reduction: TokenReduction | None = None,
) -> FinetuneResult:
    """Fine-tune (or, with `weights=None`, train from scratch) and score top-1 on test once.

    `train` is the train section (see `finetune_train_config` for the fine-tuning defaults).
    Under `torchrun`, each process trains its rows of every global batch, as in pretraining.
    With `reduction`, the encoder reduces its tokens so in training and in scoring.
    """
    ctx, device_name = init_distributed(train.device)
    try:
        with run_lock(out_dir, ctx.is_main), stop_signals():  # as pretraining: one writer
            return _finetune(
                base_cfg, weights, train, ft, Path(out_dir), resume, ctx, device_name, reduction
            )
    finally:
        shutdown_distributed()


def _finetune(
    base_cfg: RunConfig,
    weights: dict[str, torch.Tensor] | None,
    train: TrainConfig,
    ft: FinetuneConfig,
    out: Path,
    resume: bool,
    ctx: DistContext,
    device_name: str,
    reduction: TokenReduction | None = None,
) -> FinetuneResult:
    ft.check()
    start_time = time.perf_counter()
    device = pick_device(device_name)
    base = resolve_model_config(base_cfg.model)
    if base_cfg.data.source == "multi":  # several inputs per sample: the method's features
        ft = inputs_settings(ft, base)
    side = ft.img_size or min(base.input_size[-2:])
    ft = resolve_recipe(ft, train, side, weights is not None, base_cfg.data.hflip)
    cfg = copy.deepcopy(base_cfg)  # the classifier's run config, saved with its checkpoint
    cfg.model = finetune_model_config(base, ft)
    ft = replace(ft, head=classifier_head(cfg.model, ft))  # recorded as resolved
    cfg.data.limit = ft.train_limit
    # fine-tuning's own augmentation, not the pretraining crop the checkpoint carries
    cfg.data.crop_scale, cfg.data.crop_ratio = list(ft.crop_scale), list(ft.crop_ratio)
    cfg.data.hflip = bool(ft.hflip)
    cfg.out_dir = str(out)
    cfg.train = train
    source, x_test, y_test, num_classes = _labelled_data(cfg, base)
    if train.batch_size is None:
        train = replace(train, batch_size=auto_batch_size(source.num_items))
    if train.base_lr is None:
        train = replace(train, base_lr=auto_base_lr(train.epochs))
    cfg.train = train
    model, groups = _classifier(cfg, base, weights, num_classes, ft, reduction)
    model = model.to(device)
    teacher = None
    if ft.teacher:
        teacher, teacher_cfg = load_classifier(ft.teacher, device)
        _check_teacher_fits(ft.teacher, teacher, teacher_cfg, cfg, num_classes)
    record = dict(
        settings_record(train, ft), pretrained=weights is not None, num_classes=num_classes
    )
    if ctx.is_main:
        log.info(plan_line(train, ft, source.num_items))
    record.update({} if reduction is None else {"token_reduction": reduction.record})
    checkpointer = Checkpointer(out / "checkpoint", cfg, ctx, resume)
    if checkpointer.found:  # resumed: the saved weights, head included
        _check_same_settings(out, record)
        checkpointer.load_weights(model)
    fit_items = _fit_items(cfg, base, source)  # read once: the probe's data, then the fit score
    if not checkpointer.found and ft.head_init == "probe":  # LP-FT: the head starts as a probe
        _start_head_as_probe(model, cfg, fit_items, ft, device)
    _write_settings(out, record, ctx.is_main)

    objective = ClassifierLoss(model, teacher)
    run, state = assemble(
        cfg, ctx, device, model, objective, groups, source, checkpointer, "finetune"
    )
    loss = MixedLabelLoss(
        run.forward, num_classes, ft, train.seed, device, run.amp_dtype, cfg.data.mean, cfg.data.std
    )
    final_loss = train_loop(run, state, loss)
    # score the saved classifier: under FSDP the trained one is sharded across processes
    scored, _ = load_classifier(checkpointer.folder, device)
    if reduction is not None:
        scored.reduction = reduction  # scored as it was trained
    top1, train_top1 = (
        classifier_accuracy(
            scored, x, y, *feature_stats(cfg.data), device, run.amp_dtype,
            progress=train.progress and ctx.is_main, crop=ft.test_crop,
        )  # per input's statistics for samples with several inputs
        for x, y in ((x_test, y_test), fit_items)
    )  # fmt: skip
    if ctx.is_main:
        MetricsWriter(out / "metrics.jsonl").write(
            event="test", step=state.step, top1=top1, train_top1=train_top1
        )
    return FinetuneResult(
        top1,
        train_top1,
        state.step,
        state.epoch,
        source.num_items,
        len(y_test),
        final_loss,
        time.perf_counter() - start_time,
        checkpointer.folder,
        state.nonfinite,
        record,
    )


def _classifier(
    cfg: RunConfig,
    base: ModelConfig,
    weights: dict[str, torch.Tensor] | None,
    num_classes: int,
    ft: FinetuneConfig,
    reduction: TokenReduction | None = None,
) -> tuple[nn.Module, Callable[[nn.Module], list[dict]]]:
    """(classifier, its optimiser groups given the wrapped module): a ViT with a head (reducing
    its tokens with `reduction`), or for samples with several inputs the method with a head.
    Groups use the classifier's names."""
    tc = cfg.train
    if cfg.data.source == "multi":
        if reduction is not None:
            raise ConfigError("token reduction needs one image per sample, not data.source: multi")
        multi = build_inputs_classifier(cfg, weights, num_classes, ft, tc.seed)
        return multi, lambda wrapped: inputs_param_groups(multi, tc.weight_decay, ft.layer_decay)
    model = build_classifier(base, weights, num_classes, ft, tc.seed)
    model.reduction = reduction
    return model, lambda wrapped: layer_decay_param_groups(
        model, tc.weight_decay, ft.layer_decay, cfg.model.depth
    )


def _write_settings(out: Path, record: dict, is_main: bool) -> None:
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / SETTINGS_FILE).write_text(json.dumps(record, indent=1))


def _start_head_as_probe(
    model: ViTClassifier,
    cfg: RunConfig,
    fit_items: tuple[torch.Tensor, torch.Tensor],
    ft: FinetuneConfig,
    device: torch.device,
) -> None:
    """Fit the head on the frozen encoder's pooled features of (at most `FIT_ITEMS`)
    un-augmented training items, as the test images are read (see `eval/head_init.py`)."""
    images, labels = fit_items
    hw = model.encoder.cfg.image_hw

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        return resize_to(normalize(batch, cfg.data.mean, cfg.data.std), hw, ft.test_crop)

    start = time.perf_counter()
    fit = probe_initialised_head(model, images, labels, prepare, device)
    log.info(
        "head initialised as a linear probe on the frozen features of %d training items "
        "(train top-1 %.2f%%, %.0f s)", len(labels), 100 * fit, time.perf_counter() - start,
    )  # fmt: skip


#: Training items scored un-augmented after fine-tuning (the fit beside the test accuracy).
FIT_ITEMS = 10_000


def _fit_items(
    cfg: RunConfig, base: ModelConfig, source: TrainSource
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `FIT_ITEMS` training items and labels, as the test images are read."""
    if source.images is not None:
        return source.images[:FIT_ITEMS], source.labels[:FIT_ITEMS]
    images, labels = load_split(cfg.data, "train", base.in_chans, base.image_hw)
    count = min(FIT_ITEMS, source.num_items)
    return images[:count], labels[:count]
