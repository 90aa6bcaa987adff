"""Image folders read with PIL. Channels are converted by an explicit rule, never guessed.

Layout: `root/CLASS/*.png` gives labels by sub-folder (sorted names -> 0..K-1); images directly
under `root` are unlabelled (label -1). Every file's header is read once when the folder is
scanned (`scan_image`): unreadable files, decompression bombs (more pixels than PIL's
MAX_IMAGE_PIXELS) and modes that cannot become the asked channels are decided there, skipped
and counted by reason (or refused with `data.on_bad_item=fail`). Decoding then happens in
DataLoader workers; a file that still fails to decode is skipped and counted too.

Modes, decided per file at scan time (never guessed mid-epoch):
  1, L                    grey (1 channel)
  LA, La                  grey + alpha (2)
  I;16, I;16B/L/N         16-bit grey, scaled by 65535 to 8 bits (1)
  I, F                    32-bit grey, scaled by the image's own maximum (1)
  P, PA                   palette: grey (L/LA) when every palette entry is grey, else RGB/RGBA;
                          transparency becomes an alpha channel
  RGB, YCbCr, LAB, HSV    colour (3), converted to RGB
  RGBA, RGBa              colour + alpha (4)
  CMYK                    converted to RGB (3): CMYK's fourth channel is not an alpha
  animated (GIF, APNG)    the first frame only
Then: alpha is dropped when the target has none, grey is replicated to RGB, RGB gets an opaque
alpha; colour is never folded into one channel (refused).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mimkit.errors import DataError

log = logging.getLogger(__name__)

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
    "I;16B": 1,
    "I;16L": 1,
    "I;16N": 1,
    "I": 1,
    "F": 1,
    "LA": 2,
    "La": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
    "CMYK": 3,  # converted to RGB
    "RGBA": 4,
    "RGBa": 4,
}
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
AS_RGB = ("YCbCr", "LAB", "HSV", "CMYK")
CONVERSIONS = {
    (2, 1): "L",  # drop alpha
    (4, 3): "RGB",  # drop alpha
    (1, 3): "RGB",  # replicate gray
    (2, 3): "RGB",
    (3, 4): "RGBA",  # opaque alpha
    (1, 4): "RGBA",
    (2, 4): "RGBA",
}
# what a file is skipped for, as counted in the log and metrics.jsonl
UNREADABLE, TOO_LARGE, BAD_MODE, BAD_CHANNELS = "unreadable", "too_large", "mode", "channels"
# what PIL raises for a damaged or hostile file (DecompressionBombError is no OSError)
DECODE_ERRORS = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    SyntaxError,
    EOFError,
    Image.DecompressionBombError,
)


def palette_mode(image: Image.Image) -> str:
    """The mode a palette image is read as: L/LA when its palette is all grey, else RGB/RGBA."""
    alpha = "transparency" in image.info or image.mode == "PA"
    palette = image.getpalette() or []
    rgb = [palette[i : i + 3] for i in range(0, len(palette) - 2, 3)]
    grey = all(r == g == b for r, g, b in rgb)
    return ("LA" if alpha else "L") if grey else ("RGBA" if alpha else "RGB")


def effective_mode(image: Image.Image) -> str:
    return palette_mode(image) if image.mode in ("P", "PA") else image.mode


def scan_image(path: Path, channels: int) -> tuple[str, str] | None:
    """Read only the header: None for a usable file, else (reason, one-line detail)."""
    try:
        # PIL warns between 1x and 2x its pixel limit; the size is decided just below
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            width, height = image.size
            mode = effective_mode(image)
    except Image.DecompressionBombError as exc:
        return TOO_LARGE, f"{path}: {exc}"
    except DECODE_ERRORS as exc:
        return UNREADABLE, f"{path}: cannot read image ({exc})"
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        return (
            TOO_LARGE,
            f"{path}: {width}x{height} pixels, more than {limit} (a decompression bomb?)",
        )
    if width < 1 or height < 1:
        return UNREADABLE, f"{path}: empty image ({width}x{height})"
    have = MODE_CHANNELS.get(mode)
    if have is None:
        return BAD_MODE, f"{path}: unsupported image mode {mode!r}"
    if have != channels and (have, channels) not in CONVERSIONS:
        return BAD_CHANNELS, (
            f"{path}: image has {have} channel(s) (mode {mode}) but {channels} are expected; "
            "convert the images or set model.in_chans / data.channels to match"
        )
    return None


def scan_images(
    files: list[Path], channels: int, on_bad: str, where: Path
) -> tuple[set[int], Counter[str]]:
    """(indices of the unusable files, their count by reason), from each file's header.

    Unusable files stay in the listing (so item indices and per-item draws do not move) and
    are skipped whenever drawn, never decoded. With `on_bad="fail"` the first one is refused
    as a DataError instead.
    """
    bad: set[int] = set()
    skipped: Counter[str] = Counter()
    first = None
    for i, path in enumerate(files):
        problem = scan_image(path, channels)
        if problem is None:
            continue
        reason, detail = problem
        if on_bad == "fail":
            raise DataError(f"{detail} (data.on_bad_item=fail)")
        bad.add(i)
        skipped[reason] += 1
        first = first or detail
        log.warning("skipped %s", detail)
    if skipped:
        log.warning(
            "%s: %d of %d image(s) cannot be used (%s); they are skipped and counted",
            where,
            len(bad),
            len(files),
            ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())),
        )
    if files and len(bad) == len(files):
        raise DataError(f"{where}: none of {len(files)} images can be used, e.g. {first}")
    return bad, skipped


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
    if mode in ("P", "PA"):
        mode = palette_mode(image)
        image = image.convert(mode)
    if mode in SIXTEEN_BIT + ("I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        top = 65535.0 if mode in SIXTEEN_BIT else max(float(finite.max(initial=0.0)), 1.0)
        arr = np.nan_to_num(arr, nan=0.0, posinf=top, neginf=0.0)
        image = Image.fromarray((arr / top * 255.0).clip(0, 255).astype(np.uint8), mode="L")
        mode = "L"
    if mode == "1":
        image, mode = image.convert("L"), "L"
    if mode == "La":
        image, mode = image.convert("LA"), "LA"
    if mode == "RGBa":
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in AS_RGB:
        image, mode = image.convert("RGB"), "RGB"
    have = MODE_CHANNELS.get(mode)
    if have is None:
        raise DataError(f"{where}: unsupported image mode {mode!r}")
    if have == channels:
        return _hwc(np.asarray(image))
    target = CONVERSIONS.get((have, channels))
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
        image.seek(0)  # animated files: the first frame
        image.load()
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BICUBIC)
        arr = to_channels(image, channels, str(path))
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).contiguous()


class ImageFolderDataset(torch.utils.data.Dataset):
    """Items are (image uint8 (C, H, W), label, ok); `ok` is False for a file that failed to decode."""

    def __init__(
        self, root: str | Path, channels: int, size: tuple[int, int] | None, on_bad: str = "skip"
    ) -> None:
        self.files, self.labels, self.classes = list_images(root)
        self.unusable, self.skipped = scan_images(self.files, channels, on_bad, Path(root))
        self.channels = channels
        self.size = size
        self.on_bad = on_bad

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        path = self.files[index]
        try:
            if index in self.unusable:  # refused at scan (a bomb is never decoded)
                raise DataError(f"{path}: refused when the folder was scanned")
            image = decode_image(path, self.channels, self.size)
        except (*DECODE_ERRORS, DataError) as exc:
            if self.on_bad == "fail":
                raise DataError(
                    f"{path}: cannot decode image ({exc}) (data.on_bad_item=fail)"
                ) from None
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
    # default_collate stacks straight into shared memory in a worker: no copy when it is sent
    images = torch.utils.data.default_collate([img for img, _ in good])
    labels = torch.tensor([label for _, label in good], dtype=torch.int64)
    return images, labels, kept
