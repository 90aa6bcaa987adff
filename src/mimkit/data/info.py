"""`mimkit data info` and `data stats`: what a data folder holds, before anyone trains on it."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import yaml
from PIL import Image

from mimkit.data.arrays import band_stats
from mimkit.data.config import DataConfig
from mimkit.data.folder import DECODE_ERRORS, TOO_LARGE, list_images, scan_image
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
        tree = yaml.safe_load(new) or {}
        ok = [tree["data"][k] for k in ("mean", "std")] == [stats["mean"], stats["std"]]
    except (yaml.YAMLError, KeyError, TypeError):
        ok = False
    if not ok:
        raise DataError(
            f"{where}: could not set data.mean/std in place (unusual layout); set them by hand to "
            f"mean {stats['mean']}, std {stats['std']}"
        )
    return new
