"""Data sources behind one small interface: seeded, resumable batches of uint8 images.

`TrainSource.batches(epoch, start_step)` yields the same batches for the same (seed, epoch),
so a resumed run continues exactly where it stopped. In-memory sources (IDX) index a uint8
tensor; folder sources decode in DataLoader workers and report corrupt files per batch.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from mimkit.data.config import DataConfig
from mimkit.data.folder import (
    DECODE_ERRORS,
    ImageFolderDataset,
    collate_skip_corrupt,
    decode_image,
    list_images,
    scan_images,
    split_folder,
)
from mimkit.data.hf_datasets import HFDiskDataset
from mimkit.data.idx import load_fashion_mnist, read_idx
from mimkit.data.modalities import MODAL_SOURCES, load_modal_split
from mimkit.data.multi import Inputs, load_multi_split
from mimkit.data.points import load_point_split
from mimkit.data.shards import PackedShards
from mimkit.errors import DataError

log = logging.getLogger(__name__)
SOURCES = ("fashion_mnist", "idx", "folder", "packed", "hf")
ItemDataset = ImageFolderDataset | PackedShards | HFDiskDataset  # items (image, label, ok)


@dataclass
class Batch:
    images: torch.Tensor | Inputs  # (B, C, H, W) uint8; several inputs: {name: (B, C_k, H, W)}
    labels: torch.Tensor  # (B,) int64, -1 where unlabelled
    kept: torch.Tensor | None = None  # (requested items,) bool: False where decoding failed

    @property
    def skipped(self) -> int:
        """Items of this batch that could not be decoded."""
        return 0 if self.kept is None else int((~self.kept).sum())


def guess_source(path: str | Path) -> str:
    """'idx' for a folder of IDX files, 'folder' for anything else."""
    folder = Path(path)
    if folder.is_dir() and any(p.name.endswith(("-ubyte", "-ubyte.gz")) for p in folder.iterdir()):
        return "idx"
    return "folder"


def epoch_order(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled item order of an epoch: a pure function of (seed, epoch)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_items, generator=gen)


def check_images(images: torch.Tensor, channels: int, size: tuple[int, int], where: str) -> None:
    if images.ndim != 4 or images.shape[1] != channels:
        raise DataError(
            f"{where}: images have shape {tuple(images.shape)}; expected (N, {channels}, H, W)"
        )
    if tuple(images.shape[-2:]) != tuple(size):
        raise DataError(
            f"{where}: images are {images.shape[-2]}x{images.shape[-1]} but model.img_size is {size[0]}x{size[1]}"
        )


def _read_idx_pair(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    found = {}
    for kind in ("images", "labels"):
        stem = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        path = next((folder / n for n in (stem, stem + ".gz") if (folder / n).is_file()), None)
        if path is None:
            raise DataError(f"{folder}: missing {stem}(.gz) for the {split} split")
        found[kind] = (path, read_idx(path))
    (image_path, images), (label_path, labels) = found["images"], found["labels"]
    if images.dtype != "uint8" or images.ndim not in (3, 4):
        raise DataError(
            f"{image_path}: IDX images of type {images.dtype} and shape {images.shape}; "
            "expected uint8 (N, H, W) or (N, C, H, W)"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{label_path}: IDX labels of type {labels.dtype} and shape {labels.shape}; "
            "expected integers (N,)"
        )
    if len(labels) != len(images):
        raise DataError(
            f"{label_path}: {len(labels)} labels for the {len(images)} images of "
            f"{image_path.name}; the two files must pair up"
        )
    tensor = torch.from_numpy(images.copy())
    if tensor.ndim == 3:
        tensor = tensor[:, None]
    return tensor, torch.from_numpy(labels.astype("int64"))


def load_split(
    cfg: DataConfig,
    split: str,
    channels: int,
    size: tuple[int, int],
    skipped_by: Counter[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split in memory as (uint8 images, labels); for training sets and evaluation banks.

    Folder sources read `path/train` and `path/test` (or `path/val`) when those exist, else
    `path` itself for the train split. Unusable files are skipped, logged and counted by reason
    in `skipped_by` (or refused with `data.on_bad_item=fail`).
    """
    if cfg.source in MODAL_SOURCES:
        return load_modal_split(cfg, split, channels, size, skipped_by)
    if cfg.source == "points":  # float32 clouds (N, points, 3), not images
        return load_point_split(cfg, split)
    if cfg.source == "multi":  # several inputs per sample: Inputs {name: (N, C_k, H, W)}
        return load_multi_split(cfg, split, size, skipped_by)
    if cfg.source not in SOURCES:
        raise DataError(
            f"data.source: unknown source {cfg.source!r}; expected one of {list(SOURCES + MODAL_SOURCES) + ['points', 'multi']}"
        )
    if cfg.source == "fashion_mnist":
        images, labels = load_fashion_mnist(split, cfg.path, cfg.download)
    elif cfg.source == "idx":
        if not cfg.path:
            raise DataError("data.path: the idx source needs a folder holding the IDX files")
        images, labels = _read_idx_pair(Path(cfg.path), split)
    elif cfg.source == "folder":
        images, labels = _load_folder_split(cfg, split, channels, size, skipped_by)
    else:
        images, labels = _load_items(item_dataset(cfg, split, channels, size), skipped_by)
    where = f"{cfg.source}:{cfg.path or 'default'}:{split}"
    check_images(images, channels, size, where)
    return images, labels


def _load_folder_split(
    cfg: DataConfig,
    split: str,
    channels: int,
    size: tuple[int, int],
    skipped_by: Counter[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if not cfg.path:
        raise DataError("data.path: the folder source needs the path of an image folder")
    folder = split_folder(Path(cfg.path), split)
    files, labels, _ = list_images(folder)
    unusable, scanned = scan_images(files, channels, cfg.on_bad_item, folder)
    if skipped_by is not None:
        skipped_by.update(scanned)
    images, kept, skipped = [], [], 0
    for i, (path, label) in enumerate(zip(files, labels, strict=True)):
        if i in unusable:  # counted by reason at scan; never decoded
            skipped += 1
            continue
        try:
            images.append(decode_image(path, channels, size))
            kept.append(label)
        except (*DECODE_ERRORS, DataError) as exc:
            if cfg.on_bad_item == "fail":
                raise DataError(
                    f"{path}: cannot decode image ({exc}) (data.on_bad_item=fail)"
                ) from None
            skipped += 1
            log.warning("skipped corrupt image %s", path)
    if skipped > len(unusable) and skipped_by is not None:
        skipped_by["undecodable"] += skipped - len(unusable)
    if skipped:
        log.warning("%s: skipped %d corrupt image(s) of %d", folder, skipped, len(files))
    if not images:
        raise DataError(f"{folder}: none of {len(files)} images could be decoded")
    return torch.stack(images), torch.tensor(kept, dtype=torch.int64)


def item_dataset(cfg: DataConfig, split: str, channels: int, size: tuple[int, int]) -> ItemDataset:
    """The map-style dataset of a folder, a pack (`mimkit data pack`) or an HF dataset on disk."""
    if not cfg.path:
        raise DataError(f"data.path: the {cfg.source} source needs a path")
    if cfg.source == "hf":
        return HFDiskDataset(cfg.path, channels, size, cfg.on_bad_item, split)
    root = split_folder(Path(cfg.path), split)
    if cfg.source == "packed":
        return PackedShards(root, channels, size, cfg.on_bad_item)
    return ImageFolderDataset(root, channels, size, cfg.on_bad_item)


def _load_items(
    dataset: ItemDataset, skipped_by: Counter[str] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every usable item of `dataset` in memory (evaluation banks of packed and HF sources)."""
    items = [dataset[i] for i in range(len(dataset))]
    good = [(image, label) for image, label, ok in items if ok]
    if skipped_by is not None:
        skipped_by.update(dataset.skipped)
        undecodable = len(items) - len(good) - sum(dataset.skipped.values())
        if undecodable > 0:
            skipped_by["undecodable"] += undecodable
    if not good:
        raise DataError(f"{getattr(dataset, 'root', 'data')}: none of {len(items)} items could be decoded")
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good], dtype=torch.int64)


class TrainSource:
    """Seeded, resumable batches over a training set: IDX data in memory, folders streamed."""

    def __init__(self, cfg: DataConfig, channels: int, size: tuple[int, int], seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.dataset: ItemDataset | None = None
        self.images: torch.Tensor | None = None
        self.skipped: Counter[str] = Counter()  # items skipped when scanned, by reason
        # how a folder's loader batches items, and what finishes a batch (data.decode=gpu)
        self.collate, self.finish = collate_skip_corrupt, None
        if cfg.source in ("folder", "packed", "hf"):
            # streamed: decoded by DataLoader workers, so the data may exceed memory
            if not cfg.path and cfg.source == "folder":
                raise DataError("data.path: the folder source needs the path of an image folder")
            self.dataset = item_dataset(cfg, "train", channels, size)
            self.skipped = self.dataset.skipped
            self.labels = torch.tensor(self.dataset.labels)
            self.sample(1)  # fail now, not mid-epoch, on a channel mismatch
        else:
            self.images, self.labels = load_split(cfg, "train", channels, size, self.skipped)
        if cfg.limit is not None:
            if cfg.limit <= 0:
                raise DataError(f"data.limit must be positive, got {cfg.limit}")
            self.labels = self.labels[: cfg.limit]
            if self.images is not None:
                self.images = self.images[: cfg.limit]
        self.num_items = len(self.labels)

    @classmethod
    def from_tensors(
        cls, images: torch.Tensor, labels: torch.Tensor | None = None, seed: int = 0
    ) -> TrainSource:
        """An in-memory source over a uint8 (N, C, H, W) tensor, e.g. for benchmarks."""
        source = cls.__new__(cls)
        source.cfg = DataConfig(source="memory")  # a label only: nothing is read from disk
        source.seed = seed
        source.dataset = None
        source.skipped = Counter()
        source.images = images
        source.labels = labels if labels is not None else torch.full((len(images),), -1)
        source.num_items = len(images)
        return source

    def steps_per_epoch(self, batch_size: int) -> int:
        steps = self.num_items // batch_size
        if steps == 0:
            raise DataError(
                f"data: {self.num_items} training items are fewer than one batch of {batch_size}; "
                "lower train.batch_size or raise data.limit"
            )
        return steps

    def batches(
        self, epoch: int, batch_size: int, start_step: int = 0, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[Batch]:
        """Full batches of one epoch (the remainder is dropped), from `start_step` on.

        With `shard=(rank, world)` the epoch is cut into global batches of
        `batch_size * world` items and this rank reads only its `batch_size` rows of each, so
        the item order does not depend on how many processes share the work.
        """
        rank, world = shard
        order = self.epoch_order(epoch)
        global_batch = batch_size * world
        steps = self.steps_per_epoch(global_batch)
        index_batches = [
            order[i * global_batch : (i + 1) * global_batch][
                rank * batch_size : (rank + 1) * batch_size
            ]
            for i in range(start_step, steps)
        ]
        if self.images is not None:
            for idx in index_batches:
                yield Batch(self.images[idx], self.labels[idx])
            return
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=[idx.tolist() for idx in index_batches],
            num_workers=self.cfg.num_workers,
            collate_fn=self.collate,
            pin_memory=torch.cuda.is_available(),
        )
        for images, labels, kept in loader:
            if self.finish is not None:
                images, labels, kept = self.finish(images, labels, kept)
            yield Batch(images, labels, kept)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """This epoch's item order: `epoch_order`, or a pack's stream order with
        `data.shuffle_buffer` (`PackedShards.order`)."""
        buffer = getattr(self.cfg, "shuffle_buffer", 0)
        if buffer and isinstance(self.dataset, PackedShards):
            return self.dataset.order(self.num_items, self.seed, epoch, buffer)
        return epoch_order(self.num_items, self.seed, epoch)

    def sample(self, count: int) -> torch.Tensor:
        """The first `count` decodable training images, uint8, for pictures."""
        if self.images is not None:
            return self.images[:count]
        items = (self.dataset[i] for i in range(len(self.dataset)))
        good = list(itertools.islice((image for image, _, ok in items if ok), count))
        return torch.stack(good) if good else torch.empty(0, dtype=torch.uint8)


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
            "evaluation needs labels: the data has unlabelled items (images outside class folders)"
        )
    return x_train, y_train, x_test, y_test
