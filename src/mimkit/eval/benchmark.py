"""kNN evaluation of an encoder on the labelled splits of its data config."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from mimkit.config import DataConfig
from mimkit.data.sources import load_split
from mimkit.errors import DataError
from mimkit.eval.features import extract_features
from mimkit.eval.knn import knn_top1
from mimkit.models.vit import VisionTransformer


@dataclass
class KnnResult:
    top1: float
    train_items: int
    test_items: int
    seconds: float


def load_labelled_splits(
    data: DataConfig, channels: int, size: tuple[int, int], train_limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels), train cut to `train_limit`."""
    x_train, y_train = load_split(data, "train", channels, size)
    x_test, y_test = load_split(data, "test", channels, size)
    if train_limit is not None:
        x_train, y_train = x_train[:train_limit], y_train[:train_limit]
    if (y_train < 0).any() or (y_test < 0).any():
        raise DataError(
            "kNN needs labels: the data has unlabelled items (images outside class folders)"
        )
    return x_train, y_train, x_test, y_test


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
) -> KnnResult:
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = splits
    f_train = extract_features(
        encoder,
        x_train,
        mean,
        std,
        device=device,
        progress=progress,
        desc=f"{label} train features".strip(),
    )
    f_test = extract_features(
        encoder,
        x_test,
        mean,
        std,
        device=device,
        progress=progress,
        desc=f"{label} test features".strip(),
    )
    top1 = knn_top1(
        f_train.to(device), y_train, f_test.to(device), y_test, k=k, temperature=temperature
    )
    return KnnResult(top1, len(y_train), len(y_test), time.perf_counter() - start)
