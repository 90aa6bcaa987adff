"""`mimkit data info` and `data stats`: what a data folder holds, before anyone trains on it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mimkit.data.arrays import band_stats
from mimkit.data.config import DataConfig
from mimkit.data.folder import list_images
from mimkit.data.idx import find_fashion_mnist, read_idx
from mimkit.data.sources import load_split
from mimkit.errors import DataError


def describe(path: str) -> list[str]:
    if path == "fashion_mnist":
        path = str(find_fashion_mnist())
    folder = Path(path)
    if not folder.exists():
        raise DataError(f"{folder}: not found")
    idx_files = (
        sorted(p for p in folder.iterdir() if p.name.endswith(("-ubyte", "-ubyte.gz")))
        if folder.is_dir()
        else []
    )
    if idx_files:
        lines = [f"{folder}: IDX files"]
        for file in idx_files:
            arr = read_idx(file)
            extra = f", {len(set(arr.tolist()))} classes" if arr.ndim == 1 else f", {arr.dtype}"
            lines.append(f"  {file.name}: shape {tuple(arr.shape)}{extra}")
        return lines
    return _describe_images(folder)


def _describe_images(folder: Path) -> list[str]:
    splits = [folder / s for s in ("train", "val", "test") if (folder / s).is_dir()] or [folder]
    lines = []
    for split in splits:
        files, labels, classes = list_images(split)
        sizes: Counter[str] = Counter()
        modes: Counter[str] = Counter()
        corrupt = []
        for file in files:
            try:
                with Image.open(file) as image:
                    image.load()
                    sizes[f"{image.size[1]}x{image.size[0]}"] += 1
                    modes[image.mode] += 1
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
                corrupt.append(file)
        per_class = Counter(labels)
        lines.append(f"{split}: {len(files)} images, {len(classes)} classes")
        if classes:
            lines.append(
                "  per class: " + ", ".join(f"{c}={per_class[i]}" for i, c in enumerate(classes))
            )
        if per_class[-1]:
            lines.append(f"  unlabelled (outside class folders): {per_class[-1]}")
        lines.append("  sizes (HxW): " + ", ".join(f"{s} x{n}" for s, n in sizes.most_common(5)))
        lines.append("  modes: " + ", ".join(f"{m} x{n}" for m, n in modes.most_common()))
        lines.append(
            f"  corrupt (would be skipped): {len(corrupt)}"
            + (f", e.g. {corrupt[0]}" if corrupt else "")
        )
    return lines


def data_stats(cfg: DataConfig, channels: int, size: tuple[int, int]) -> dict[str, list[float]]:
    """Per-channel mean and std of the training split, in the units `data.mean/std` expect."""
    items, _ = load_split(cfg, "train", channels, size)
    mean, std = band_stats(items)
    return {"mean": mean, "std": std}
