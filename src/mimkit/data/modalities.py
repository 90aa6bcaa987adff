"""Sources beyond 2-D images: video folders, volumes, multi-band tiles and spectrograms.

`load_split` in `data.sources` hands the MODAL_SOURCES here. Each returns a whole split in
memory as (items, labels): uint8 clips (N, C, T, H, W) for `video`, uint8 volumes
(N, C, D, H, W) for `volume`, float32 (N, C, H, W) for `multiband` and `spectrogram`. Clips and
volumes may be longer than the model's first axis (T or D); they are cropped to it on the device.
DICOM (`dicom`: frames as uint8 images, `dicom_volume`: files as volumes or clips) is read by
`data.dicom`, GeoTIFF (`geotiff`: float32 tiles, NaN at nodata) by `data.geotiff`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from mimkit.data.arrays import VOLUME_EXTENSIONS, load_array_folder, read_array
from mimkit.data.config import DataConfig
from mimkit.data.dicom import load_dicom_folder
from mimkit.data.folder import split_folder
from mimkit.data.geotiff import load_geotiff_folder
from mimkit.data.video import load_video_folder
from mimkit.errors import DataError

MODAL_SOURCES = ("video", "volume", "multiband", "spectrogram", "dicom", "dicom_volume", "geotiff")


def load_modal_split(
    cfg: DataConfig,
    split: str,
    channels: int,
    size: tuple[int, int],
    skipped_by: Counter[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A split of a modal source; `size` is the model's (H, W); skips counted in `skipped_by`."""
    if not cfg.path:
        raise DataError(f"data.path: the {cfg.source} source needs a folder")
    folder = split_folder(Path(cfg.path), split)
    if cfg.source == "video":
        if cfg.frame_stride < 1:
            raise DataError(f"data.frame_stride must be >= 1, got {cfg.frame_stride}")
        items, labels, skipped = load_video_folder(
            folder, channels, size, cfg.frame_stride, cfg.max_frames
        )
        if skipped and skipped_by is not None:
            skipped_by["video"] += skipped
        return items, labels
    if cfg.source == "volume":
        return _load_volumes(folder, channels, size, skipped_by, cfg.on_bad_item)
    if cfg.source in ("dicom", "dicom_volume"):
        return load_dicom_folder(
            folder, channels, size, cfg.dicom_window, cfg.source == "dicom_volume", skipped_by,
            cfg.on_bad_item,
        )  # fmt: skip
    if cfg.source == "geotiff":
        return load_geotiff_folder(
            folder, channels, size, cfg.bands, cfg.nodata, skipped_by, cfg.on_bad_item
        )
    items, labels, _ = load_array_folder(
        folder, cfg.source, channels, size, skipped_by=skipped_by, on_bad=cfg.on_bad_item
    )
    return items, labels


def _load_volumes(
    folder: Path,
    channels: int,
    size: tuple[int, int],
    skipped_by: Counter[str] | None = None,
    on_bad: str = "skip",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Volumes of any depth with the model's (H, W), stacked at the most common depth.

    Deeper volumes are cut to it around their middle; shallower ones are skipped and counted
    (one odd volume never decides the depth of all the others).
    """
    files = [p for p in folder.rglob("*") if p.suffix.lower() in VOLUME_EXTENSIONS]
    depths: Counter[int] = Counter()
    for path in files:
        try:
            array = read_array(path)
        except DataError:
            continue
        if array.ndim >= 3:
            depths[array.shape[-3]] += 1
    if not depths:
        raise DataError(f"{folder}: no readable volumes")
    # the most common depth; on a tie the shallower, so that more volumes fit
    depth = min(depths, key=lambda d: (-depths[d], d))
    items, labels, _ = load_array_folder(
        folder, "volume", channels, (depth, *size), skipped_by=skipped_by, on_bad=on_bad
    )
    return items, labels
