"""Image folders read with PIL. Channels are converted by an explicit rule, never guessed.

Layout: `root/CLASS/*.png` gives labels by sub-folder (sorted names -> 0..K-1); images directly
under `root` are unlabelled (label -1). Decoding happens in DataLoader workers; an image that
fails to decode is skipped and counted, never silently dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mimkit.errors import DataError

IMAGE_EXTENSIONS = {
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
}
MODE_CHANNELS = {
    "1": 1,
    "L": 1,
    "I;16": 1,
    "I": 1,
    "F": 1,
    "LA": 2,
    "RGB": 3,
    "YCbCr": 3,
    "RGBA": 4,
    "CMYK": 4,
}


def list_images(
    root: str | Path, extensions: set[str] | frozenset[str] = frozenset(IMAGE_EXTENSIONS)
) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) under `root`, in a sorted, reproducible order.

    `extensions` picks the file kind (images by default; videos and arrays reuse the layout).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in extensions)
        files += found
        labels += [label] * len(found)
    loose = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    files += loose
    labels += [-1] * len(loose)
    if not files:
        raise DataError(f"{root}: no files found (looked for {', '.join(sorted(extensions))})")
    return files, labels, classes


def split_folder(root: Path, split: str) -> Path:
    """The folder of a split: `root/train`, `root/test` or `root/val`; `root` itself for train."""
    names = ("train",) if split == "train" else ("test", "val")
    for name in names:
        if (root / name).is_dir():
            return root / name
    if split == "train":
        return root
    raise DataError(f"{root}: no 'test' or 'val' folder to evaluate on")


def to_channels(image: Image.Image, channels: int, where: str) -> np.ndarray:
    """HWC uint8 array with exactly `channels` channels, by these rules only:

    grayscale -> RGB replicates the gray channel; an alpha channel is dropped when the target
    has none; RGB -> RGBA adds an opaque alpha. Anything that would lose colour (RGB into one
    channel) is refused: the user should say so by converting their data or the model.
    """
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("I;16", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode == "I;16" else max(float(arr.max()), 1.0)
        image = Image.fromarray((arr / top * 255.0).clip(0, 255).astype(np.uint8), mode="L")
        mode = "L"
    if mode == "1":
        image, mode = image.convert("L"), "L"
    have = MODE_CHANNELS.get(mode)
    if have is None:
        raise DataError(f"{where}: unsupported image mode {mode!r}")
    if have == channels:
        return _hwc(np.asarray(image.convert("RGB") if mode == "YCbCr" else image))
    conversions = {
        (2, 1): "L",  # drop alpha
        (4, 3): "RGB",  # drop alpha
        (1, 3): "RGB",  # replicate gray
        (2, 3): "RGB",
        (3, 4): "RGBA",  # opaque alpha
    }
    target = conversions.get((have, channels))
    if target is None:
        raise DataError(
            f"{where}: image has {have} channel(s) (mode {mode}) but {channels} are expected; "
            "convert the images or set model.in_chans / data.channels to match"
        )
    return _hwc(np.asarray(image.convert(target)))


def _hwc(arr: np.ndarray) -> np.ndarray:
    return arr[..., None] if arr.ndim == 2 else arr


def decode_image(path: Path, channels: int, size: tuple[int, int] | None) -> torch.Tensor:
    """(C, H, W) uint8; resized (bicubic, PIL) to `size` when given."""
    with Image.open(path) as image:
        image.load()
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BICUBIC)
        arr = to_channels(image, channels, str(path))
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).contiguous()


class ImageFolderDataset(torch.utils.data.Dataset):
    """Items are (image uint8 (C, H, W), label, ok); `ok` is False for a file that failed to decode."""

    def __init__(self, root: str | Path, channels: int, size: tuple[int, int] | None) -> None:
        self.files, self.labels, self.classes = list_images(root)
        self.channels = channels
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        path = self.files[index]
        try:
            image = decode_image(path, self.channels, self.size)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            # corrupt or truncated file: report it to the collate step, which counts it
            h, w = self.size or (1, 1)
            return torch.zeros(self.channels, h, w, dtype=torch.uint8), self.labels[index], False
        return image, self.labels[index], True


def collate_skip_corrupt(
    items: list[tuple[torch.Tensor, int, bool]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack the good items; also return which of the requested items they are (bool per item),
    so the caller can count the skipped ones and keep per-item randomness aligned."""
    kept = torch.tensor([ok for _, _, ok in items], dtype=torch.bool)
    good = [(img, label) for img, label, ok in items if ok]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), kept
    images = torch.stack([img for img, _ in good])
    labels = torch.tensor([label for _, label in good], dtype=torch.int64)
    return images, labels, kept
