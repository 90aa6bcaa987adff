"""`mimkit data info` and `data stats`: what a data folder holds, before anyone trains on it.

`data info` reads every layout the data sources read: IDX files, image folders, and the folders
`mimkit data synth` writes: arrays (.npy/.npz/TIFF/NIfTI volumes, tiles, spectrograms: shapes,
dtypes, value range) and videos (frames and size per clip, with PyAV from mimkit[video]).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from mimkit.data.arrays import NIFTI_SUFFIXES, VOLUME_EXTENSIONS, band_stats, read_array
from mimkit.data.config import DataConfig
from mimkit.data.folder import (
    DECODE_ERRORS,
    IMAGE_EXTENSIONS,
    TOO_LARGE,
    list_images,
    scan_image,
)
from mimkit.data.idx import find_fashion_mnist, read_idx
from mimkit.data.sources import load_split
from mimkit.data.video import VIDEO_EXTENSIONS
from mimkit.errors import DataError
from mimkit.yamlio import load_yaml

ARRAY_ONLY = frozenset({".npy", ".npz", ".nii", ".gz"})  # suffixes no image reader takes


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


def _kind(split: Path) -> str:
    """'arrays', 'videos' or 'images': what the files under a split folder are."""
    suffixes = Counter(p.suffix.lower() for p in split.rglob("*") if p.is_file())
    if any(s in ARRAY_ONLY for s in suffixes):
        return "arrays"
    if any(s in VIDEO_EXTENSIONS for s in suffixes):
        return "videos"
    tiffs = sorted(p for p in split.rglob("*") if p.suffix.lower() in (".tif", ".tiff"))
    if tiffs and not any(s in IMAGE_EXTENSIONS - {".tif", ".tiff"} for s in suffixes):
        try:  # multi-band or 16-bit TIFF tiles are arrays, not pictures
            with Image.open(tiffs[0]) as image:
                if getattr(image, "n_frames", 1) > 1 or image.mode not in ("L", "RGB", "RGBA"):
                    return "arrays"
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            return "arrays"
    return "images"


def _head(lines: list[str], split: Path, files: list[Path], labels: list[int], classes, what: str):
    per_class = Counter(labels)
    lines.append(f"{split}: {len(files)} {what}, {len(classes)} classes")
    if classes:
        lines.append(
            "  per class: " + ", ".join(f"{c}={per_class[i]}" for i, c in enumerate(classes))
        )
    if per_class[-1]:
        lines.append(f"  unlabelled (outside class folders): {per_class[-1]}")


def _describe_arrays(split: Path, lines: list[str]) -> None:
    files, labels, classes = list_images(split, VOLUME_EXTENSIONS)
    files = [
        f for f in files if f.suffix.lower() != ".gz" or f.name.lower().endswith(NIFTI_SUFFIXES)
    ]
    _head(lines, split, files, labels[: len(files)], classes, "arrays")
    shapes: Counter[str] = Counter()
    low, high, bad = np.inf, -np.inf, []
    for file in files:
        try:
            arr = (
                np.load(file, mmap_mode="r") if file.suffix.lower() == ".npy" else read_array(file)
            )
            shapes[f"{tuple(arr.shape)} {arr.dtype}"] += 1
            if arr.size:
                low, high = min(low, float(np.min(arr))), max(high, float(np.max(arr)))
        except (DataError, OSError, ValueError) as exc:
            bad.append(f"{file} ({exc})" if not str(exc).startswith(str(file)) else str(exc))
    lines.append("  shapes (dtype): " + ", ".join(f"{s} x{n}" for s, n in shapes.most_common(5)))
    if shapes:
        lines.append(f"  values: {low:g} .. {high:g}")
    lines.append(
        f"  unreadable (would be skipped): {len(bad)}" + (f", e.g. {bad[0]}" if bad else "")
    )


def _describe_videos(split: Path, lines: list[str]) -> None:
    files, labels, classes = list_images(split, VIDEO_EXTENSIONS)
    _head(lines, split, files, labels, classes, "videos")
    try:
        import av  # optional dependency: mimkit[video]
    except ImportError:
        lines.append("  frames and sizes: install mimkit[video] (PyAV) to read them")
        return
    shapes: Counter[str] = Counter()
    bad = []
    for file in files:
        try:
            with av.open(str(file)) as container:
                stream = container.streams.video[0]
                frames = stream.frames or sum(1 for _ in container.decode(stream))
                shapes[
                    f"{frames} frames {stream.codec_context.height}x{stream.codec_context.width}"
                ] += 1
        except (av.error.FFmpegError, OSError, IndexError, ValueError) as exc:
            bad.append(f"{file} ({exc})")
    lines.append("  clips: " + ", ".join(f"{s} x{n}" for s, n in shapes.most_common(5)))
    lines.append(
        f"  unreadable (would be skipped): {len(bad)}" + (f", e.g. {bad[0]}" if bad else "")
    )


def _describe_images(folder: Path) -> list[str]:
    splits = [folder / s for s in ("train", "val", "test") if (folder / s).is_dir()] or [folder]
    lines: list[str] = []
    for split in splits:
        kind = _kind(split)
        if kind != "images":
            (_describe_arrays if kind == "arrays" else _describe_videos)(split, lines)
            continue
        files, labels, classes = list_images(split)
        sizes: Counter[str] = Counter()
        modes: Counter[str] = Counter()
        corrupt, too_large = [], []
        for file in files:
            if (scan_image(file, 1) or ("",))[0] == TOO_LARGE:
                too_large.append(file)  # never decoded: that is what a bomb wants
                continue
            try:
                with Image.open(file) as image:
                    image.load()
                    sizes[f"{image.size[1]}x{image.size[0]}"] += 1
                    modes[
                        image.mode + (" animated" if getattr(image, "n_frames", 1) > 1 else "")
                    ] += 1
            except DECODE_ERRORS:
                corrupt.append(file)
        _head(lines, split, files, labels, classes, "images")
        lines.append("  sizes (HxW): " + ", ".join(f"{s} x{n}" for s, n in sizes.most_common(5)))
        lines.append("  modes: " + ", ".join(f"{m} x{n}" for m, n in modes.most_common()))
        lines.append(
            f"  corrupt (would be skipped): {len(corrupt)}"
            + (f", e.g. {corrupt[0]}" if corrupt else "")
        )
        if too_large:
            lines.append(
                f"  too large (decompression bombs, would be skipped): {len(too_large)}, "
                f"e.g. {too_large[0]}"
            )
    return lines


def data_stats(cfg: DataConfig, channels: int, size: tuple[int, int]) -> dict[str, list[float]]:
    """Per-channel mean and std of the training split, in the units `data.mean/std` expect."""
    items, _ = load_split(cfg, "train", channels, size)
    mean, std = band_stats(items)
    return {"mean": mean, "std": std}


def set_data_stats(text: str, stats: dict[str, list[float]], where: str) -> str:
    """`text` (a YAML config) with `data.mean` and `data.std` set, every other line (comments
    included) kept as it was. Refused in one line when the data section is not plain YAML."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"data:\s*(#.*)?$", line)), None)
    values = {k: "[" + ", ".join(repr(float(v)) for v in stats[k]) + "]" for k in ("mean", "std")}
    if start is None:
        block = ["data:"] + [f"  {k}: {v}" for k, v in values.items()]
        lines = lines + ([""] if lines and lines[-1].strip() else []) + block
    else:
        end = start + 1
        while end < len(lines) and (not lines[end].strip() or lines[end].startswith((" ", "\t"))):
            end += 1
        body = lines[start + 1 : end]
        indent = next((re.match(r"\s*", b).group(0) for b in body if b.strip()), "  ")
        for key, value in values.items():
            at = next((i for i, b in enumerate(body) if re.match(rf"{indent}{key}:", b)), None)
            if at is None:
                body.insert(0, f"{indent}{key}: {value}")
                continue
            comment = re.search(r"\s#.*$", body[at])
            body[at] = f"{indent}{key}: {value}" + (comment.group(0) if comment else "")
            # a block list under the key ("- 0.5" lines) goes with the old value
            while at + 1 < len(body) and re.match(rf"{indent}\s*- ", body[at + 1]):
                del body[at + 1]
        lines = lines[: start + 1] + body + lines[end:]
    new = "\n".join(lines) + "\n"
    try:
        tree = load_yaml(new) or {}
        ok = [tree["data"][k] for k in ("mean", "std")] == [stats["mean"], stats["std"]]
    except (yaml.YAMLError, KeyError, TypeError):
        ok = False
    if not ok:
        raise DataError(
            f"{where}: could not set data.mean/std in place (unusual layout); set them by hand to "
            f"mean {stats['mean']}, std {stats['std']}"
        )
    return new
