"""Weighted cosine k-nearest-neighbour classification on frozen features (Wu et al. 2018; DINO).

Each test item votes with its k most similar training items, each vote weighted by
exp(similarity / T). Test items are processed in chunks so memory stays bounded by
chunk x bank, whatever the bank size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mimkit.eval.cache import cached_features
from mimkit.models.vit import VisionTransformer


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int | None = None,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Predicted class per test item, (M,) int64, on the device of `train_features`."""
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(bank.device)
    k = min(k, bank.shape[0])
    preds = []
    for start in range(0, test_features.shape[0], chunk_size):
        query = F.normalize(
            test_features[start : start + chunk_size].to(bank.device).float(), dim=1
        )
        sims, idx = (query @ bank.T).topk(k, dim=1)
        weights = (sims / temperature).exp()
        votes = torch.zeros(query.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, labels[idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy in [0, 1] of weighted cosine kNN."""
    preds = knn_predict(train_features, train_labels, test_features, k=k, temperature=temperature)
    return (preds.cpu() == test_labels.cpu()).float().mean().item()


@dataclass
class KnnResult:
    top1: float
    train_items: int
    test_items: int
    seconds: float


def knn_evaluate(
    encoder: VisionTransformer,
    splits: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    mean: list[float],
    std: list[float],
    k: int = 20,
    temperature: float = 0.07,
    device: torch.device | str = "cpu",
    progress: bool = True,
    label: str = "",
    cache_dir: str | Path | None = None,
    pool: str | None = None,
    block: int | None = None,
) -> KnnResult:
    """Features of (train, test) uint8 splits (cached in `cache_dir` if given); kNN top-1."""
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = splits
    common = dict(device=device, progress=progress, cache_dir=cache_dir, pool=pool, block=block)
    f_train = cached_features(
        encoder, x_train, mean, std, desc=f"{label} train features".strip(), **common
    )
    f_test = cached_features(
        encoder, x_test, mean, std, desc=f"{label} test features".strip(), **common
    )
    top1 = knn_top1(
        f_train.to(device), y_train, f_test.to(device), y_test, k=k, temperature=temperature
    )
    return KnnResult(top1, len(y_train), len(y_test), time.perf_counter() - start)
