"""Semantic segmentation transfer: a pretrained encoder's patch tokens, labelled per pixel.

Two heads, both predicting at the patch grid and upsampled (bilinear) to the label's pixels:
- `linear`: BatchNorm + a 1x1 convolution on the frozen final patch tokens (the dense
  counterpart of the linear probe);
- `fpn`: a light feature-pyramid decoder over four blocks (ViTDet's simple pyramid, an FPN
  top-down path, UperNet's fuse), with the encoder frozen, or fine-tuned with layer-wise lr
  decay (`train.optim.layer_decay_param_groups`).

The encoder is rebuilt at the scenes' resolution (a multiple of its patch, images resized to
it when they are not one); its fixed position table is regenerated at the new grid
(`eval.finetune.encoder_weights`). Frozen features are computed once and cached in memory.
Scores are the confusion-matrix mIoU (over classes present in prediction or truth), pixel
accuracy and per-class IoU on the validation split, at the label's own resolution; pixels at
the ignore index count for nothing. Training uses no augmentation and sees no val data.

Scenes are single images. A checkpoint trained on samples with several inputs (`data.source:
multi`: MultiMAE, CroCo, CROMA) is evaluated through the encoder of the one input its
`encoder` reads (`method.encoder_input`), the scenes normalised with that input's statistics
and standing in for it; the other inputs' encoders and a fusion encoder are not used
(`scene_encoder` says so in its note).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mimkit.config import RunConfig
from mimkit.data.transforms import normalize
from mimkit.errors import ConfigError
from mimkit.eval.finetune import encoder_weights, resize_to
from mimkit.eval.segment_settings import SegmentSettings
from mimkit.models.config import ModelConfig, resolve_model_config
from mimkit.models.vit import VisionTransformer
from mimkit.train.checkpoint import load_state_into
from mimkit.train.optim import layer_decay_param_groups, lr_at, set_lr

#: RGB colour of each class index (background black), and of ignored pixels (white)
PALETTE = np.random.default_rng(7).integers(40, 256, (256, 3)).astype(np.uint8)
PALETTE[0] = 0
IGNORE_COLOUR = (255, 255, 255)


@dataclass
class SegmentScores:
    miou: float
    pixel_acc: float
    per_class_iou: list[float | None]  # None: class absent from truth and prediction


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int
) -> torch.Tensor:
    """(K, K) int64 counts, rows the true class, columns the predicted; ignored pixels left out."""
    valid = target != ignore_index
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores_from_confusion(conf: torch.Tensor) -> SegmentScores:
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp))
    per_class = [
        float(v) if p else None for v, p in zip(iou.tolist(), present.tolist(), strict=True)
    ]
    miou = float(iou[present].mean()) if present.any() else 0.0
    return SegmentScores(miou, float(tp.sum() / conf.sum().clamp(min=1)), per_class)


def segment_model_config(base: ModelConfig, image_hw: tuple[int, int]) -> ModelConfig:
    """The checkpoint's geometry at the scenes' size, rounded to a whole number of patches."""
    p = base.patch_size
    hw = [max(p, round(s / p) * p) for s in image_hw]
    size = hw[0] if hw[0] == hw[1] else hw
    return resolve_model_config(replace(base, img_size=size, drop_path_rate=0.0))


def build_encoder(
    base: ModelConfig,
    weights: dict[str, torch.Tensor],
    image_hw: tuple[int, int],
    where: str,
    kind: type[VisionTransformer] = VisionTransformer,
) -> VisionTransformer:
    """An encoder (of class `kind`: an ALiBi encoder has no table) at the scenes' resolution
    with the weights of a full checkpoint."""
    cfg = segment_model_config(base, image_hw)
    encoder = kind(cfg)
    load_state_into(encoder, encoder_weights(weights, base, cfg), where)
    return encoder


@dataclass
class SceneEncoder:
    encoder: VisionTransformer
    mean: list[float]
    std: list[float]
    note: str | None = None  # several inputs per sample: which input's encoder is evaluated


def scene_encoder(
    method: nn.Module, run: RunConfig, image_hw: tuple[int, int], where: str
) -> SceneEncoder:
    """The encoder segmentation scenes are read with, at their resolution, and the statistics
    they are normalised with: the checkpoint's encoder and `data.mean/std`; for samples with
    several inputs the encoder of `method.encoder_input` and that input's statistics."""
    weights = method.state_dict()
    if run.data.source != "multi":
        encoder = build_encoder(run.model, weights, image_hw, where)
        return SceneEncoder(encoder, run.data.mean, run.data.std)
    name = getattr(method, "encoder_input", None)
    if name not in run.data.inputs:
        raise ConfigError(
            f"{where}: segmentation scenes are single images, and method {run.method.name!r} "
            f"names no input of data.inputs ({', '.join(run.data.inputs)}) its encoder reads"
        )
    spec = run.data.inputs[name]
    encoder = build_encoder(run.model, weights, image_hw, where, type(method.encoder))
    note = (
        f"scenes are single images: {run.method.name}'s encoder of input {name!r} is evaluated "
        f"(data.inputs.{name} statistics); the other inputs and any fusion are not used"
    )
    return SceneEncoder(encoder, spec.mean, spec.std, note)


def pyramid_blocks(depth: int) -> list[int]:
    """Four evenly spaced blocks (1-based, the last included), as ViTDet/UperNet take them."""
    return sorted({max(1, round(depth * k / 4)) for k in range(1, 5)})


def token_maps(
    encoder: VisionTransformer, x: torch.Tensor, blocks: list[int]
) -> list[torch.Tensor]:
    """(B, D, gh, gw) patch-token maps: the final normalised tokens, then the outputs of
    `blocks` (1-based), all from one forward pass."""
    gh, gw = encoder.grid_hw
    n = encoder.num_prefix_tokens
    out, hidden = encoder(x, return_hidden=True)
    seqs = [out] + [hidden[b] for b in blocks]
    return [s[:, n:].transpose(1, 2).reshape(len(x), -1, gh, gw) for s in seqs]


def head_inputs(kind: str, maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """What a head reads of `token_maps`: the linear head the final tokens, fpn the blocks."""
    return maps[:1] if kind == "linear" else maps[1:]


def prepare(images: torch.Tensor, encoder: VisionTransformer, mean, std) -> torch.Tensor:
    return resize_to(normalize(images, mean, std), encoder.cfg.image_hw)


@torch.no_grad()
def frozen_maps(
    encoder: VisionTransformer, images: torch.Tensor, mean, std, blocks, device, batch_size=64
) -> list[torch.Tensor]:
    """Token maps of every image, computed once with the encoder in eval mode (kept on CPU)."""
    encoder.eval()
    out: list[list[torch.Tensor]] = []
    for start in range(0, len(images), batch_size):
        x = prepare(images[start : start + batch_size].to(device), encoder, mean, std)
        out.append([m.cpu() for m in token_maps(encoder, x, blocks)])
    return [torch.cat(level) for level in zip(*out, strict=True)]


class LinearSegHead(nn.Module):
    """BatchNorm + 1x1 convolution on one token map: (B, D, gh, gw) -> (B, K, gh, gw)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(dim)
        self.classify = nn.Conv2d(dim, num_classes, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.bn(maps[0]))


def _conv(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class FPNSegHead(nn.Module):
    """A light pyramid decoder over four token maps (B, D, gh, gw), all at the patch grid.

    Each map is projected to `width` channels, then brought to stride 4, 2, 1 and 1/2 of the
    grid (ViTDet's simple pyramid, here after the projection to keep it light), merged top-down
    (FPN), smoothed, and all levels are upsampled to the finest and fused (UperNet) before a
    1x1 classifier: (B, K, 4 gh, 4 gw).
    """

    def __init__(self, dim: int, num_classes: int, levels: int, width: int = 64) -> None:
        super().__init__()
        scales = (4, 2, 1, 0.5)[:levels]
        self.lateral = nn.ModuleList(_conv(dim, width, 1) for _ in scales)
        self.resample = nn.ModuleList(self._resampler(width, s) for s in scales)
        self.smooth = nn.ModuleList(_conv(width, width, 3) for _ in scales)
        self.fuse = _conv(width * len(scales), width, 3)
        self.classify = nn.Conv2d(width, num_classes, 1)

    @staticmethod
    def _resampler(width: int, scale: float) -> nn.Module:
        if scale == 4:
            return nn.Sequential(
                nn.ConvTranspose2d(width, width, 2, stride=2),
                nn.BatchNorm2d(width),
                nn.GELU(),
                nn.ConvTranspose2d(width, width, 2, stride=2),
            )
        if scale == 2:
            return nn.ConvTranspose2d(width, width, 2, stride=2)
        if scale == 0.5:
            return nn.MaxPool2d(2, ceil_mode=True)
        return nn.Identity()

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        feats = [res(lat(m)) for m, lat, res in zip(maps, self.lateral, self.resample, strict=True)]
        for i in range(len(feats) - 2, -1, -1):  # top-down: coarse context into finer levels
            up = F.interpolate(feats[i + 1], size=feats[i].shape[-2:], mode="bilinear")
            feats[i] = feats[i] + up
        finest = feats[0].shape[-2:]
        fused = [
            F.interpolate(smooth(f), size=finest, mode="bilinear")
            for f, smooth in zip(feats, self.smooth, strict=True)
        ]
        return self.classify(self.fuse(torch.cat(fused, 1)))


def pixel_logits(logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits, size=tuple(hw), mode="bilinear", align_corners=False)


@dataclass
class SegmentResult:
    scores: SegmentScores
    predictions: torch.Tensor  # (N, H, W) int64 on the val split
    seconds: float  # features (shared by frozen heads, counted in each) and training
    steps: int
    encoder: VisionTransformer | None = None  # the fine-tuned copy, when fine-tuned


def train_pixels(
    optimizer: torch.optim.Optimizer,
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    ignore_index: int,
    settings: SegmentSettings,
    device: torch.device,
) -> int:
    """Pixel cross-entropy over `settings.epochs` of seeded batches; warm-up + cosine lr (the
    optimiser's groups scaled by their `lr_scale`). `logits_of(rows)`: patch-grid logits of
    those items. Returns the steps taken."""
    gen = torch.Generator().manual_seed(settings.seed)
    total = math.ceil(len(labels) / settings.batch_size) * settings.epochs
    step = 0
    for _ in range(settings.epochs):
        order = torch.randperm(len(labels), generator=gen)
        for start in range(0, len(labels), settings.batch_size):
            rows = order[start : start + settings.batch_size]
            set_lr(optimizer, lr_at(step, total, max(1, total // 20), settings.lr))
            y = labels[rows].to(device)
            logits = pixel_logits(logits_of(rows), y.shape[-2:])
            loss = F.cross_entropy(logits, y, ignore_index=ignore_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return step


def train_on_maps(
    head: nn.Module,
    maps: list[torch.Tensor],
    labels: torch.Tensor,
    ignore_index: int,
    settings: SegmentSettings,
    device: torch.device,
) -> int:
    """Train `head` on fixed token maps (frozen features); the steps taken."""
    head.to(device).train()
    opt = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    return train_pixels(
        opt, lambda rows: head([m[rows].to(device) for m in maps]), labels, ignore_index,
        settings, device,
    )  # fmt: skip


@torch.no_grad()
def predict_maps(
    head: nn.Module, maps: list[torch.Tensor], hw, device, batch_size=64
) -> torch.Tensor:
    head.to(device).eval()
    preds = []
    for start in range(0, len(maps[0]), batch_size):
        logits = head([m[start : start + batch_size].to(device) for m in maps])
        preds.append(pixel_logits(logits, hw).argmax(1).cpu())
    return torch.cat(preds)


class SegmentationModel(nn.Module):
    """Encoder + head, images in, patch-grid logits out: what fine-tuning trains."""

    def __init__(self, encoder: VisionTransformer, head: nn.Module, blocks: list[int]) -> None:
        super().__init__()
        self.encoder, self.head, self.blocks = encoder, head, blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = token_maps(self.encoder, x, self.blocks)
        return self.head(maps[1:] if self.blocks else maps[:1])


def finetune_segmentation(
    model: SegmentationModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean,
    std,
    ignore_index: int,
    settings: SegmentSettings,
    device: torch.device,
) -> int:
    """Train encoder and head together, lr decayed per block from the head down; the steps."""
    model.to(device).train()
    groups = layer_decay_param_groups(model, settings.weight_decay, settings.layer_decay)
    opt = torch.optim.AdamW(groups, lr=settings.lr)

    def logits_of(rows: torch.Tensor) -> torch.Tensor:
        return model(prepare(images[rows].to(device), model.encoder, mean, std))

    return train_pixels(opt, logits_of, labels, ignore_index, settings, device)


def make_head(kind: str, dim: int, num_classes: int, levels: int, width: int) -> nn.Module:
    if kind == "linear":
        return LinearSegHead(dim, num_classes)
    return FPNSegHead(dim, num_classes, levels, width)


def evaluate_heads(
    encoder: VisionTransformer,
    kinds: tuple[str, ...],
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    ignore_index: int,
    mean,
    std,
    settings: SegmentSettings,
    device: torch.device,
    finetune: bool = False,
) -> dict[str, SegmentResult]:
    """Train each head in `kinds` (`linear`, `fpn`) on `train` (uint8 images, labels) and score
    it on `val`. Frozen: the token maps are computed once and shared by the heads. Fine-tuned:
    each head trains its own copy of the encoder with layer-wise lr decay."""
    dim = encoder.cfg.embed_dim
    blocks = pyramid_blocks(len(encoder.blocks)) if "fpn" in kinds else []
    hw = tuple(val[1].shape[-2:])
    results = {}
    if not finetune:
        start = time.perf_counter()
        encoder.requires_grad_(False)
        train_maps = frozen_maps(encoder, train[0], mean, std, blocks, device)
        val_maps = frozen_maps(encoder, val[0], mean, std, blocks, device)
        shared = time.perf_counter() - start
    for kind in kinds:
        start = time.perf_counter()
        torch.manual_seed(settings.seed)
        head = make_head(kind, dim, num_classes, len(blocks), settings.width)
        if finetune:
            own = copy.deepcopy(encoder).requires_grad_(True)
            model = SegmentationModel(own, head, blocks if kind == "fpn" else [])
            steps = finetune_segmentation(model, *train, mean, std, ignore_index, settings, device)
            maps = head_inputs(kind, frozen_maps(own, val[0], mean, std, blocks, device))
        else:
            lr = settings.linear_lr if kind == "linear" else settings.lr
            own_settings = replace(settings, lr=lr)
            steps = train_on_maps(
                head, head_inputs(kind, train_maps), train[1], ignore_index, own_settings, device
            )
            maps = head_inputs(kind, val_maps)
        preds = predict_maps(head, maps, hw, device)
        seconds = time.perf_counter() - start + (0 if finetune else shared)
        conf = confusion_matrix(preds, val[1], num_classes, ignore_index)
        tuned = own if finetune else None
        results[kind] = SegmentResult(scores_from_confusion(conf), preds, seconds, steps, tuned)
    return results


def colourise(labels: np.ndarray, ignore_index: int) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8, ignored pixels white."""
    rgb = PALETTE[np.clip(labels, 0, 255)]
    rgb[labels == ignore_index] = IGNORE_COLOUR
    return rgb


def prediction_panel(
    images: torch.Tensor, truth: torch.Tensor, preds: torch.Tensor, ignore_index: int
) -> np.ndarray:
    """One row per item: the image (grey or RGB), its ground truth, the prediction; uint8 RGB."""
    rows = []
    for image, t, p in zip(images, truth, preds, strict=True):
        img = image.permute(1, 2, 0).numpy()
        img = np.repeat(img[..., :1], 3, -1) if img.shape[-1] != 3 else img
        gap = np.full((img.shape[0], 2, 3), 128, np.uint8)
        rows.append(
            np.concatenate(
                [
                    img,
                    gap,
                    colourise(t.numpy(), ignore_index),
                    gap,
                    colourise(p.numpy(), ignore_index),
                ],
                axis=1,
            )
        )
        rows.append(np.full((2, rows[-1].shape[1], 3), 128, np.uint8))
    return np.concatenate(rows[:-1], axis=0)
