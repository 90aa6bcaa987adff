"""Hugging Face `datasets` on disk as a training source (`data.source=hf`, mimkit[hfdata]).

`data.path` is what `Dataset.save_to_disk` / `DatasetDict.save_to_disk` wrote (Arrow files
beside `state.json` or `dataset_dict.json`), or Parquet: one `.parquet` file or a folder of them
(`SPLIT-*.parquet`, `data/SPLIT-*.parquet` or `SPLIT/*.parquet`, as the Hub lays them out). The
Arrow tables are memory-mapped, so items are read by index like a folder's files and follow the
same seeded order, ranks, workers and resume as every other source.

The image column is the first of `datasets.Image` type, else the first column named `image`,
`img`, `pixel_values` or `pixels` (arrays, HWC or CHW uint8); the label column is `label` or
`labels` (integers or `ClassLabel`), else items are unlabelled (-1). Images are decoded from
their bytes by PIL (`Image(decode=False)`), resized to the model's size and given its channels
by the folder rules (`mimkit.data.folder.to_channels`); nothing is unpickled.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mimkit.data.folder import DECODE_ERRORS, to_channels
from mimkit.errors import DataError

log = logging.getLogger(__name__)
IMAGE_NAMES = ("image", "img", "pixel_values", "pixels")
LABEL_NAMES = ("label", "labels")
SPLIT_NAMES = {"train": ("train",), "test": ("test", "validation", "val")}


def _parquet_files(root: Path, split: str) -> list[Path]:
    if root.is_file():
        return [root] if split == "train" else []
    for name in SPLIT_NAMES.get(split, (split,)):
        for pattern in (f"{name}-*.parquet", f"data/{name}-*.parquet", f"{name}/*.parquet"):
            found = sorted(root.glob(pattern))
            if found:
                return found
    return sorted(root.glob("*.parquet")) if split == "train" else []


def open_hf_dataset(root: str | Path, split: str = "train") -> Any:
    """The `datasets.Dataset` of `split` saved under `root` (save_to_disk or Parquet)."""
    try:
        import datasets  # optional dependency: mimkit[hfdata]
    except ImportError:
        raise DataError(
            "data.source=hf needs the `datasets` package: pip install 'mimkit[hfdata]'"
        ) from None

    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: Hugging Face dataset not found")
    if root.is_dir() and (
        (root / "state.json").is_file() or (root / "dataset_dict.json").is_file()
    ):
        try:
            saved = datasets.load_from_disk(str(root))
        except (OSError, ValueError, FileNotFoundError) as exc:
            raise DataError(f"{root}: cannot load the saved dataset ({exc})") from None
        if isinstance(saved, datasets.DatasetDict):
            names = [n for n in SPLIT_NAMES.get(split, (split,)) if n in saved]
            if not names:
                raise DataError(
                    f"{root}: no {split!r} split; the dataset has {sorted(saved.keys())}"
                )
            return saved[names[0]]
        if split != "train":
            raise DataError(f"{root}: one saved dataset (no splits); nothing to use as {split!r}")
        return saved
    files = _parquet_files(root, split)
    if not files:
        raise DataError(
            f"{root}: neither a save_to_disk folder (state.json or dataset_dict.json) nor "
            f"Parquet files for the {split!r} split"
        )
    try:
        return datasets.Dataset.from_parquet([str(f) for f in files])
    except (OSError, ValueError) as exc:
        raise DataError(f"{root}: cannot read Parquet ({exc})") from None


def _columns(ds: Any, where: Path) -> tuple[str, bool, str | None]:
    """(image column, whether it holds encoded images, label column or None)."""
    import datasets  # optional: mimkit[hfdata]; only reached after open_hf_dataset imported it

    features = ds.features
    encoded = [n for n, f in features.items() if isinstance(f, datasets.Image)]
    named = [n for n in IMAGE_NAMES if n in features]
    if not encoded and not named:
        raise DataError(
            f"{where}: no image column (a datasets.Image feature or one named "
            f"{'/'.join(IMAGE_NAMES)}); columns are {list(features)}"
        )
    image = encoded[0] if encoded else named[0]
    label = next((n for n in LABEL_NAMES if n in features), None)
    return image, bool(encoded), label


class HFDiskDataset(torch.utils.data.Dataset):
    """Items are (image uint8 (C, H, W), label, ok) from a `datasets.Dataset` on disk."""

    def __init__(
        self,
        root: str | Path,
        channels: int,
        size: tuple[int, int] | None,
        on_bad: str = "skip",
        split: str = "train",
    ) -> None:
        import datasets  # optional: mimkit[hfdata]

        self.root = Path(root)
        ds = open_hf_dataset(self.root, split)
        self.image_column, self.encoded, label = _columns(ds, self.root)
        if self.encoded:  # bytes out, decoded by our PIL rules
            ds = ds.cast_column(self.image_column, datasets.Image(decode=False))
        self.ds = ds.select_columns([self.image_column])
        self.labels = [int(x) for x in ds[label]] if label else [-1] * len(ds)
        feature = ds.features.get(label) if label else None
        self.classes = list(getattr(feature, "names", None) or [])
        self.channels, self.size, self.on_bad = channels, size, on_bad
        self.skipped: Counter[str] = Counter()  # nothing is refused before it is read

    def __len__(self) -> int:
        return len(self.ds)

    def _image(self, value: Any, where: str) -> torch.Tensor:
        if self.encoded:
            if not isinstance(value, dict) or not (value.get("bytes") or value.get("path")):
                raise DataError(f"{where}: neither image bytes nor a path")
            # a datasets.Image holds the encoded bytes, or the path of a file it was made from
            stored = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
            with Image.open(stored) as image:
                image.seek(0)
                image.load()
                return self._fit(image, where)
        arr = np.asarray(value)
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # CHW -> HWC
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
            raise DataError(
                f"{where}: array of type {arr.dtype} and shape {arr.shape}; expected uint8 HW, HWC or CHW"
            )
        return self._fit(
            Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr), where
        )

    def _fit(self, image: Image.Image, where: str) -> torch.Tensor:
        size = self.size
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BICUBIC)
        arr = to_channels(image, self.channels, where)
        return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        where = f"{self.root}: row {index} column {self.image_column!r}"
        try:
            image = self._image(self.ds[index][self.image_column], where)
        except (*DECODE_ERRORS, DataError) as exc:
            if self.on_bad == "fail":
                raise DataError(f"{where}: cannot decode ({exc}) (data.on_bad_item=fail)") from None
            h, w = self.size or (1, 1)
            return torch.zeros(self.channels, h, w, dtype=torch.uint8), self.labels[index], False
        return image, self.labels[index], True
