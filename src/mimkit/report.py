"""What `mimkit pretrain` shows at the end: kNN of the trained encoder next to its random-init
twin (same architecture, same seed), and a reconstruction image.

The kNN report is proportionate to the run: unless `eval.knn_train_limit` sets the bank, the bank
is the first N training items with N the number of images the run trained on (at least
`MIN_BANK`, at most the split) and the test set the first max(`MIN_TEST`, N / 6) test items. A
demo of 3 epochs over Fashion-MNIST still uses all 60,000 + 10,000; a 2,048-image try uses
2,048 + 1,000 instead of 70,000 twice. Features go to the run's feature cache (RUN/eval/features),
so `mimkit eval knn RUN --train-limit N --test-limit M` (the line printed) reads them back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mimkit.config import RunConfig
from mimkit.data.sources import load_labelled_splits
from mimkit.eval.cache import feature_cache_dir
from mimkit.eval.features import feature_encoder, feature_stats
from mimkit.eval.knn import knn_evaluate
from mimkit.inspect.reconstructions import save_reconstructions
from mimkit.objectives.base import MaskedMethod
from mimkit.train.checkpoint import method_from_config
from mimkit.train.runtime import pick_device

MIN_BANK, MIN_TEST = 1000, 1000


def knn_sizes(
    limit: int | None, images_seen: int | None, n_train: int, n_test: int
) -> tuple[int, int]:
    """(bank, test) of the end-of-run kNN: `limit` when set (all test items), else scaled to the
    images the run trained on."""
    if limit is not None:
        return min(limit, n_train), n_test
    if images_seen is None:
        return n_train, n_test
    bank = min(n_train, max(MIN_BANK, images_seen))
    return bank, min(n_test, max(MIN_TEST, bank // 6))


def pretrain_report(
    model: MaskedMethod,
    cfg: RunConfig,
    train_samples: torch.Tensor | None = None,
    images_seen: int | None = None,
    announce=print,
) -> dict[str, Any]:
    """kNN lines and a reconstruction image; pictures use test images, else `train_samples`.

    `images_seen` (the run's steps x global batch) scales the kNN bank and test set; `announce`
    says what is about to be computed before it starts."""
    device = pick_device(cfg.train.device)
    model = model.to(device).eval()
    out = Path(cfg.out_dir)
    ec = cfg.eval
    lines: list[str] = []
    results: dict[str, Any] = {}
    splits = None
    if ec.knn:
        x_train, y_train, x_test, y_test = load_labelled_splits(
            cfg.data, cfg.model.in_chans, cfg.model.image_hw, ec.knn_train_limit
        )
        bank, test = knn_sizes(ec.knn_train_limit, images_seen, len(y_train), len(y_test))
        splits = (x_train[:bank], y_train[:bank], x_test[:test], y_test[:test])
        why = (
            "eval.knn_train_limit"
            if ec.knn_train_limit is not None
            else f"scaled to the {images_seen:,} images trained on"
            if images_seen is not None
            else "whole splits"
        )
        twice = " and its random-init twin" if ec.compare_random_init else ""
        announce(
            f"kNN report: features of the encoder{twice} on bank {bank:,} / {len(y_train):,}, test "
            f"{test:,} / {len(y_test):,} ({why}; eval.knn=false skips it)",
        )
        cache = feature_cache_dir(out / "checkpoint")
        kwargs = dict(
            k=ec.knn_k,
            temperature=ec.knn_temperature,
            device=device,
            progress=cfg.train.progress,
            cache_dir=cache,
        )
        stats = feature_stats(cfg.data)  # per input for samples with several inputs
        trained = knn_evaluate(
            feature_encoder(model, cfg.data), splits, *stats, label="pretrained", **kwargs
        )
        results["knn_pretrained"] = trained.top1
        desc = f"k={ec.knn_k}, T={ec.knn_temperature}, bank {trained.train_items}, test {trained.test_items}"
        lines.append(f"kNN top-1 pretrained:  {100 * trained.top1:.2f}%  ({desc})")
        if ec.compare_random_init:
            torch.manual_seed(cfg.train.seed)  # the very initialisation pretraining started from
            random_model = method_from_config(cfg).to(device)
            rand = knn_evaluate(
                feature_encoder(random_model, cfg.data),
                splits,
                *stats,
                label="random-init",
                **kwargs,
            )
            results["knn_random_init"] = rand.top1
            lines.append(
                f"kNN top-1 random init: {100 * rand.top1:.2f}%  (same architecture and seed, untrained)"
            )
        whole = (bank, test) == (len(y_train), len(y_test))
        flags = "" if whole else f" --train-limit {bank} --test-limit {test}"
        lines.append(f"features cached in {cache}: `mimkit eval knn {out}{flags}` reads them back")
        results["knn_bank"], results["knn_test"] = bank, test
    images = (
        one_per_class(splits[2], splits[3], ec.reconstruction_images)
        if splits is not None
        else train_samples
    )
    pictures = getattr(model, "reconstructs_pixels", False)  # HOG/feature targets: no images
    if pictures and ec.reconstruction_images > 0 and images is not None and len(images):
        path = save_reconstructions(
            model,
            images,
            cfg.data.mean,
            cfg.data.std,
            out / "reconstruction.png",
            seed=cfg.train.seed,
        )
        results["reconstruction_image"] = str(path)
        lines.append(
            f"reconstructions: {path}  (columns: original | masked | reconstruction | visible + reconstruction)"
        )
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return {"results": results, "lines": lines}


def one_per_class(images: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    """Up to `count` images: the first of each class, then the second of each, and so on, so
    a picture of a class-sorted split does not show one class only."""
    if count <= 0 or len(labels) == 0:
        return images[:0]
    order = torch.argsort(labels, stable=True)  # grouped by class, file order within a class
    grouped = labels[order]
    rank = torch.arange(len(grouped)) - torch.searchsorted(grouped, grouped)  # place in class
    key = rank * (len(labels) + 1) + (grouped - grouped.min())
    return images[order[torch.argsort(key, stable=True)][:count]]
