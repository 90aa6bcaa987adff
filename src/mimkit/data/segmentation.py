"""Semantic segmentation data: images with per-pixel label PNGs (ADE20K/Cityscapes layout).

```
root/images/train/NAME.png|jpg|...     root/annotations/train/NAME.png
root/images/val/NAME.png|jpg|...       root/annotations/val/NAME.png
root/classes.txt                       one class name per line; line i (from 0) is label i
root/dataset.json                      optional: {"ignore_index": 255}
```

An annotation is a single-channel PNG (mode L, P or I) of the image's size whose values are
class indices, or the ignore index for pixels that count for nothing. Items are paired by file
stem. A bad pair (an image that does not decode, no annotation, a size mismatch, a label
outside the classes) is skipped with one line naming the file and counted, never a traceback.
Images of another size than the split's first are resized to it (bilinear; labels nearest).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mimkit.data.folder import IMAGE_EXTENSIONS, to_channels
from mimkit.errors import DataError

log = logging.getLogger(__name__)
CLASSES_FILE = "classes.txt"
META_FILE = "dataset.json"
DEFAULT_IGNORE_INDEX = 255
LABEL_MODES = ("L", "P", "I", "I;16")


@dataclass
class SegmentationSplit:
    """uint8 images (N, C, H, W), int64 labels (N, H, W), the class names and ignore index,
    and the pairs skipped (one message each)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    ignore_index: int
    names: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def read_class_names(root: Path) -> list[str]:
    path = root / CLASSES_FILE
    if not path.is_file():
        raise DataError(f"{path}: class-name file not found (one class name per line)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) < 2:
        raise DataError(f"{path}: expected at least 2 class names, one per line; got {len(names)}")
    return names


def read_ignore_index(root: Path) -> int:
    path = root / META_FILE
    if not path.is_file():
        return DEFAULT_IGNORE_INDEX
    try:
        meta = json.loads(path.read_text())
        value = meta.get("ignore_index", DEFAULT_IGNORE_INDEX)
    except (json.JSONDecodeError, AttributeError) as err:
        raise DataError(f'{path}: expected a JSON object, e.g. {{"ignore_index": 255}}') from err
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DataError(f"{path}: ignore_index must be a non-negative integer, got {value!r}")
    return value


def _pairs(root: Path, split: str) -> tuple[list[tuple[Path, Path]], list[str]]:
    images, annotations = root / "images" / split, root / "annotations" / split
    for folder in (images, annotations):
        if not folder.is_dir():
            raise DataError(
                f"{folder}: folder not found (layout: images/{split}, annotations/{split})"
            )
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"{images}: no images found")
    pairs, skipped = [], []
    for image in files:
        label = annotations / f"{image.stem}.png"
        if label.is_file():
            pairs.append((image, label))
        else:
            skipped.append(f"{image}: no annotation {label.name} in {annotations}")
    return pairs, skipped


def decode_pair(
    image_path: Path,
    label_path: Path,
    channels: int,
    num_classes: int,
    ignore_index: int,
    size: tuple[int, int] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(image HWC uint8, labels HW int64); DataError naming the file when the pair is bad."""
    try:
        with Image.open(image_path) as im:
            im.load()
            image = to_channels(im, channels, str(image_path))
            hw = (im.height, im.width)
        with Image.open(label_path) as lab:
            lab.load()
            if lab.mode not in LABEL_MODES:
                raise DataError(
                    f"{label_path}: annotation must be a single-channel PNG of class indices "
                    f"(mode L, P or I), got mode {lab.mode}"
                )
            labels = np.asarray(lab, dtype=np.int64)
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"{err.filename or image_path}: cannot decode ({err})") from err
    if labels.shape != hw:
        raise DataError(f"{label_path}: annotation is {labels.shape} but its image is {hw}")
    bad = (labels >= num_classes) & (labels != ignore_index)
    if bad.any():
        raise DataError(
            f"{label_path}: label {int(labels[bad][0])} is not a class (0..{num_classes - 1}) "
            f"nor the ignore index {ignore_index}"
        )
    if size is not None and hw != tuple(size):
        image = np.asarray(
            Image.fromarray(image.squeeze(-1) if channels == 1 else image).resize(
                (size[1], size[0]), Image.BILINEAR
            )
        )
        image = image[..., None] if image.ndim == 2 else image
        labels = np.asarray(
            Image.fromarray(labels.astype(np.int32)).resize((size[1], size[0]), Image.NEAREST),
            dtype=np.int64,
        )
    return image, labels


def load_segmentation_split(
    root: str | Path, split: str, channels: int, limit: int | None = None
) -> SegmentationSplit:
    """Every good (image, annotation) pair of `split` ('train' or 'val'), first `limit` only."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: segmentation data folder not found")
    names = read_class_names(root)
    ignore = read_ignore_index(root)
    pairs, skipped = _pairs(root, split)
    images, labels, kept = [], [], []
    size = None
    for image_path, label_path in pairs[:limit] if limit else pairs:
        try:
            image, lab = decode_pair(image_path, label_path, channels, len(names), ignore, size)
        except DataError as err:
            skipped.append(str(err))
            continue
        size = size or lab.shape
        images.append(image)
        labels.append(lab)
        kept.append(image_path.stem)
    for message in skipped:
        log.warning("skipped: %s", message)
    if not images:
        raise DataError(f"{root}: no usable {split} pairs ({len(skipped)} skipped)")
    return SegmentationSplit(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        labels=torch.from_numpy(np.stack(labels)),
        class_names=names,
        ignore_index=ignore,
        names=kept,
        skipped=skipped,
    )
