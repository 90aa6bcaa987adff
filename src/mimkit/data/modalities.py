"""Sources beyond 2-D images: video folders, volumes, multi-band tiles and spectrograms.

`load_split` in `data.sources` hands the MODAL_SOURCES here. Each returns a whole split in
memory as (items, labels): uint8 clips (N, C, T, H, W) for `video`, uint8 volumes
(N, C, D, H, W) for `volume`, float32 (N, C, H, W) for `multiband` and `spectrogram`. Clips and
volumes may be longer than the model's first axis (T or D); they are cropped to it on the device.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mimkit.data.arrays import VOLUME_EXTENSIONS, load_array_folder, read_array
from mimkit.data.config import DataConfig
from mimkit.data.folder import split_folder
from mimkit.data.video import load_video_folder
from mimkit.errors import DataError

MODAL_SOURCES = ("video", "volume", "multiband", "spectrogram")


def load_modal_split(
    cfg: DataConfig, split: str, channels: int, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A split of a modal source; `size` is the model's (H, W)."""
    if not cfg.path:
        raise DataError(f"data.path: the {cfg.source} source needs a folder")
    folder = split_folder(Path(cfg.path), split)
    if cfg.source == "video":
        if cfg.frame_stride < 1:
            raise DataError(f"data.frame_stride must be >= 1, got {cfg.frame_stride}")
        items, labels, _ = load_video_folder(
            folder, channels, size, cfg.frame_stride, cfg.max_frames
        )
        return items, labels
    if cfg.source == "volume":
        return _load_volumes(folder, channels, size)
    items, labels, _ = load_array_folder(folder, cfg.source, channels, size)
    return items, labels


def _load_volumes(
    folder: Path, channels: int, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Volumes of any depth with the model's (H, W); cut to the shallowest so they stack."""
    files = [p for p in folder.rglob("*") if p.suffix.lower() in VOLUME_EXTENSIONS]
    depths = set()
    for path in files:
        try:
            array = read_array(path)
        except DataError:
            continue
        depths.add(array.shape[-3] if array.ndim >= 3 else 0)
    if not depths:
        raise DataError(f"{folder}: no readable volumes")
    depth = max(depths)  # the common size; shallower ones are reported and skipped
    items, labels, _ = load_array_folder(folder, "volume", channels, (depth, *size))
    return items, labels
