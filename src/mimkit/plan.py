"""Zero-config pretraining: look at a folder of images, plan a run for a wall-clock budget.

`mimkit pretrain PATH --budget 5m` calls, in order: `survey_folder` (count, channels, sizes,
classes: header reads only), `folder_stats` (per-channel mean/std of the training split, cached
by the folder's listing, never another dataset's), `plan_run` (image size, patch size, model,
batch, lr and steps, from a short timing of this machine on the planned model), then the
ordinary `pretrain`, then `encoder_report` (kNN and linear probe of the pretrained encoder, its
untrained twin and raw pixels).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from mimkit.config import RunConfig, config_from_dict
from mimkit.data.config import DataConfig
from mimkit.data.folder import list_images, split_folder
from mimkit.data.info import data_stats
from mimkit.data.sources import load_labelled_splits
from mimkit.data.transforms import normalize
from mimkit.errors import ConfigError, DataError
from mimkit.eval.features import extract_features
from mimkit.eval.knn import knn_top1
from mimkit.eval.linear import linear_probe
from mimkit.train.checkpoint import method_from_config
from mimkit.train.optim import param_groups
from mimkit.train.runtime import pick_device

#: Header reads for the sizes and modes; a folder's first files in sorted order per class.
SURVEY_FILES = 2000
#: Items of the evaluation banks (train) and test sets, so the report fits in the budget.
EVAL_TRAIN_ITEMS = 10_000
EVAL_TEST_ITEMS = 5_000


@dataclass
class Survey:
    """What a folder holds, from file listings and image headers."""

    path: str
    train_items: int
    test_items: int  # 0: no test/ or val/ folder (the report then holds out part of train)
    classes: list[str]
    channels: int  # 1 (grey) or 3 (colour), from the most common image mode
    sizes: Counter = field(default_factory=Counter)  # "HxW" -> count among surveyed files

    @property
    def side(self) -> int:
        """The shorter side of the most common size."""
        h, w = (int(v) for v in self.sizes.most_common(1)[0][0].split("x"))
        return min(h, w)

    def lines(self) -> list[str]:
        size = ", ".join(f"{s} x{n}" for s, n in self.sizes.most_common(3))
        test = f"{self.test_items} test" if self.test_items else "no test split"
        return [
            f"data {self.path}: {self.train_items} training images, {test}, "
            f"{len(self.classes)} classes, {self.channels} channel(s), sizes {size}"
        ]


def survey_folder(path: str | Path) -> Survey:
    """Count, classes, channels and sizes of an image folder (train/ and test/ or flat)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of images")
    files, _, classes = list_images(split_folder(root, "train"))
    test = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    test_items = len(list_images(test)[0]) if test is not None else 0
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    step = max(1, len(files) // SURVEY_FILES)  # spread over the classes, not the first one
    for file in files[::step][:SURVEY_FILES]:
        try:
            with Image.open(file) as image:
                sizes[f"{image.size[1]}x{image.size[0]}"] += 1
                modes[image.mode] += 1
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            continue
    if not sizes:
        raise DataError(f"{root}: none of the surveyed images could be read")
    grey = sum(n for m, n in modes.items() if m in ("L", "I", "I;16", "F", "1", "LA"))
    channels = 1 if grey * 2 >= sum(modes.values()) else 3
    return Survey(str(root), len(files), test_items, classes, channels, sizes)


def stats_cache_file(data: DataConfig, channels: int, size: tuple[int, int]) -> Path:
    """Where a folder's statistics are cached: keyed by its path, listing size and the read
    geometry, under $MIMKIT_CACHE (default ~/.cache/mimkit/stats)."""
    root = Path(data.path or "").resolve()
    files, _, _ = list_images(split_folder(root, "train"))
    newest = max(f.stat().st_mtime for f in files)
    key = f"{root}|{len(files)}|{newest}|{channels}|{size}"
    base = Path(os.environ.get("MIMKIT_CACHE", Path.home() / ".cache" / "mimkit")) / "stats"
    return base / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".json")


def folder_stats(
    data: DataConfig, channels: int, size: tuple[int, int]
) -> tuple[dict[str, list[float]], bool]:
    """({"mean", "std"} of the folder's training images, whether it came from the cache)."""
    cache = stats_cache_file(data, channels, size)
    if cache.is_file():
        return json.loads(cache.read_text()), True
    stats = data_stats(data, channels, size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(stats))
    return stats, False


def model_geometry(side: int) -> tuple[int, int]:
    """(image side, patch size) for images whose shorter side is `side`: a 4x4 grid up to 32
    pixels (the demo's 7-pixel patches on 28), 8x8 above, images resized to at most 128."""
    img = min(side, 128)
    grid = 4 if img <= 32 else 8
    img -= img % grid
    return img, img // grid


def planned_config(survey: Survey, stats: dict[str, list[float]], out_dir: str) -> RunConfig:
    """A MAE run for the survey's images, before the budget fixes batch and length."""
    img, patch = model_geometry(survey.side)
    tree: dict[str, Any] = {
        "model": {
            "preset": "vit_tiny",
            "img_size": img,
            "in_chans": survey.channels,
            "patch_size": patch,
            "depth": 6,  # the demo's half-depth ViT-tiny: twice the steps per CPU minute
            "decoder_embed_dim": 128,
            "decoder_depth": 2,
            "decoder_num_heads": 4,
            "pool": "avg",
        },
        "masking": {"ratio": 0.75},
        "method": {"name": "mae", "norm_pix_loss": True},
        "data": {
            "source": "folder",
            "path": survey.path,
            "channels": survey.channels,
            "mean": stats["mean"],
            "std": stats["std"],
            "crop_scale": [0.35, 1.0] if img <= 32 else [0.2, 1.0],
            "hflip": True,
        },
        "train": {"batch_size": batch_for(survey.train_items), "base_lr": 1.5e-4},
        "eval": {"knn": False, "reconstruction_images": 0},
        "out_dir": out_dir,
    }
    return config_from_dict(tree, "zero-config plan")


def batch_for(items: int) -> int:
    """The power of two nearest items / 100, in [32, 256], and no more than the items."""
    target = max(32, min(256, items // 100))
    batch = 1 << int(round(math.log2(target)))
    while batch > max(1, items):  # at least one full batch per epoch
        batch //= 2
    return batch


@dataclass
class Speed:
    train_img_per_s: float
    features_img_per_s: float


def measure_speed(cfg: RunConfig, steps: int = 4) -> Speed:
    """Images per second of this machine for the planned method's training step (AdamW,
    backward) and for feature extraction, timed after one warm-up step on random images."""
    device = pick_device(cfg.train.device)
    torch.manual_seed(0)
    model = method_from_config(cfg).to(device).train()
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
    b = cfg.train.batch_size
    images = torch.randint(0, 256, (b, cfg.model.in_chans, *cfg.model.image_hw), dtype=torch.uint8)
    x = normalize(images.to(device), cfg.data.mean, cfg.data.std)
    gen = torch.Generator(device=device).manual_seed(0)
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        loss = model(x, mask=model.draw_mask(b, device, gen)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train_rate = b * steps / (time.perf_counter() - start)
    for _ in range(2):  # the second pass is timed, the first warms up
        start = time.perf_counter()
        extract_features(
            model.encoder, images, cfg.data.mean, cfg.data.std, device=device, progress=False
        )
    return Speed(train_rate, b / (time.perf_counter() - start))


@dataclass
class Plan:
    cfg: RunConfig
    steps: int
    epochs: int
    train_seconds: float
    eval_seconds: float
    speed: Speed
    eval_items: tuple[int, int]  # (bank, test) items the report reads

    def lines(self) -> list[str]:
        m, t = self.cfg.model, self.cfg.train
        grid = "x".join(str(g) for g in m.grid_hw)
        return [
            f"plan: MAE, ViT {m.embed_dim} wide x {m.depth} blocks, {m.img_size} px images in "
            f"{m.patch_size} px patches ({grid} grid), 75% masked; mean {self.cfg.data.mean}, "
            f"std {self.cfg.data.std}",
            f"plan: batch {t.batch_size}, base lr {t.base_lr:g}, {self.steps} steps "
            f"({self.epochs} epoch(s)) ~ {self.train_seconds:.0f} s of training at "
            f"{self.speed.train_img_per_s:.0f} img/s measured here, "
            + (
                f"then ~{self.eval_seconds:.0f} s of evaluation"
                if self.eval_items[0]
                else "no evaluation (no class folders, so no labels)"
            ),
        ]


#: Share of the budget the report may take (features of two encoders, kNN and probes).
EVAL_SHARE = 0.3


def eval_items(survey: Survey, budget_s: float, speed: Speed) -> tuple[int, int]:
    """(bank items, test items) the report reads: all there are, up to 10,000 and 5,000, and
    no more than two feature passes fit in `EVAL_SHARE` of the budget (test a fifth of it)."""
    test = survey.test_items or max(1, survey.train_items // 5)
    fits = int(EVAL_SHARE * budget_s * speed.features_img_per_s / 2)
    bank = min(survey.train_items, EVAL_TRAIN_ITEMS, max(100, fits * 4 // 5))
    return bank, min(test, EVAL_TEST_ITEMS, max(50, fits // 5))


def plan_run(
    survey: Survey,
    cfg: RunConfig,
    budget_s: float,
    speed: Speed | None = None,
    reload_s: float = 0.0,
) -> Plan:
    """Steps and epochs that fill `budget_s` (what is left of the budget) after the report.

    The report decodes the splits again (`reload_s`, as long as the statistics took) and
    extracts features twice (pretrained, untrained) over its bank and test items.
    """
    speed = speed or measure_speed(cfg)
    if survey.classes:
        bank, test = eval_items(survey, budget_s, speed)
        eval_s = 2 * (bank + test) / speed.features_img_per_s + reload_s + 15  # + probes, kNN
    else:  # no labels, no report: the whole budget trains
        bank, test, eval_s = 0, 0, 0.0
    train_s = budget_s - eval_s
    if train_s < 0.2 * budget_s:
        raise ConfigError(
            f"--budget {budget_s:.0f}s: this machine needs about {eval_s:.0f} s just to evaluate; "
            "give a larger budget"
        )
    b = cfg.train.batch_size
    steps = max(1, int(train_s * speed.train_img_per_s / b))
    per_epoch = max(1, survey.train_items // b)
    epochs = max(1, math.ceil(steps / per_epoch))
    tc = cfg.train
    tc.epochs, tc.max_steps = epochs, steps
    tc.warmup_epochs = min(1.0, 0.05 * steps / per_epoch)  # warm-up: 5 % of the steps
    return Plan(cfg, steps, epochs, steps * b / speed.train_img_per_s, eval_s, speed, (bank, test))


def pixel_features(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """Raw pixels as features: the normalised image, flattened."""
    return normalize(images, mean, std).flatten(1)


def report_splits(
    cfg: RunConfig, survey: Survey, bank: int, test: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bank, bank labels, test, test labels) at the model's size, seeded random picks; without
    a test split, a seeded fifth of train is held out."""
    if survey.test_items:
        x_tr, y_tr, x_te, y_te = load_labelled_splits(
            cfg.data, cfg.model.in_chans, cfg.model.image_hw
        )
    else:
        x, y, _, _ = load_labelled_splits(cfg.data, cfg.model.in_chans, cfg.model.image_hw)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        held, kept = order[: len(y) // 5], order[len(y) // 5 :]
        x_tr, y_tr, x_te, y_te = x[kept], y[kept], x[held], y[held]
    gen = torch.Generator().manual_seed(1)  # spread over classes: folders are class-sorted
    pick_tr = torch.randperm(len(y_tr), generator=gen)[:bank]
    pick_te = torch.randperm(len(y_te), generator=gen)[:test]
    return x_tr[pick_tr], y_tr[pick_tr], x_te[pick_te], y_te[pick_te]


def encoder_report(
    model: torch.nn.Module, cfg: RunConfig, survey: Survey, items: tuple[int, int]
) -> tuple[dict[str, Any], list[str]]:
    """kNN (k=20, T=0.07) and the cached linear probe for the pretrained encoder, the same
    architecture untrained (seeded as pretraining started) and raw pixels."""
    if not survey.classes:
        return {}, ["no class folders: no labels to evaluate with (kNN/linear skipped)"]
    device = pick_device(cfg.train.device)
    x_tr, y_tr, x_te, y_te = report_splits(cfg, survey, *items)
    torch.manual_seed(cfg.train.seed)
    untrained = method_from_config(cfg).encoder
    mean, std = cfg.data.mean, cfg.data.std
    feats = {"pixels": (pixel_features(x_tr, mean, std), pixel_features(x_te, mean, std))}
    for name, encoder in (("pretrained", model.encoder), ("untrained", untrained)):
        feats[name] = tuple(
            extract_features(encoder, x, mean, std, device=device, progress=False)
            for x in (x_tr, x_te)
        )
    results: dict[str, Any] = {}
    lines = [f"evaluation: bank {len(y_tr)} train items, {len(y_te)} test items"]
    for name in ("pretrained", "untrained", "pixels"):
        f_tr, f_te = feats[name]
        knn = knn_top1(f_tr, y_tr, f_te, y_te, k=min(20, len(y_tr)), temperature=0.07)
        lin = linear_probe(f_tr, y_tr, f_te, y_te)
        results[name] = {"knn": knn, "linear": lin.top1, "linear_lr": lin.lr}
        lines.append(
            f"  {name:<10}  kNN {100 * knn:6.2f}%   linear probe (cached features) "
            f"{100 * lin.top1:6.2f}% (lr {lin.lr:g})"
        )
    return results, lines


def parse_budget(text: str) -> float:
    """'5m', '90s', '1h', '300' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1:].lower() in units:
            return float(text[:-1]) * units[text[-1].lower()]
        return float(text)
    except ValueError:
        raise ConfigError(f"--budget {text!r}: expected a time such as 90s, 5m or 1h") from None
