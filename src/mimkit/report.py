"""What `mimkit pretrain` shows at the end: kNN of the trained encoder next to its random-init
twin (same architecture, same seed), and a reconstruction image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mimkit.config import RunConfig
from mimkit.data.sources import load_labelled_splits
from mimkit.eval.knn import knn_evaluate
from mimkit.inspect.reconstructions import save_reconstructions
from mimkit.objectives.base import MaskedMethod
from mimkit.train.checkpoint import method_from_config
from mimkit.train.runtime import pick_device


def pretrain_report(
    model: MaskedMethod, cfg: RunConfig, train_samples: torch.Tensor | None = None
) -> dict[str, Any]:
    """kNN lines and a reconstruction image; pictures use test images, else `train_samples`."""
    device = pick_device(cfg.train.device)
    model = model.to(device).eval()
    out = Path(cfg.out_dir)
    ec = cfg.eval
    lines: list[str] = []
    results: dict[str, Any] = {}
    splits = None
    if ec.knn:
        splits = load_labelled_splits(
            cfg.data, cfg.model.in_chans, cfg.model.image_hw, ec.knn_train_limit
        )
        kwargs = dict(
            k=ec.knn_k, temperature=ec.knn_temperature, device=device, progress=cfg.train.progress
        )
        trained = knn_evaluate(
            model.encoder, splits, cfg.data.mean, cfg.data.std, label="pretrained", **kwargs
        )
        results["knn_pretrained"] = trained.top1
        desc = f"k={ec.knn_k}, T={ec.knn_temperature}, bank {trained.train_items}, test {trained.test_items}"
        lines.append(f"kNN top-1 pretrained:  {100 * trained.top1:.2f}%  ({desc})")
        if ec.compare_random_init:
            torch.manual_seed(cfg.train.seed)  # the very initialisation pretraining started from
            random_model = method_from_config(cfg)
            rand = knn_evaluate(
                random_model.encoder,
                splits,
                cfg.data.mean,
                cfg.data.std,
                label="random-init",
                **kwargs,
            )
            results["knn_random_init"] = rand.top1
            lines.append(
                f"kNN top-1 random init: {100 * rand.top1:.2f}%  (same architecture and seed, untrained)"
            )
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
