"""Array items: volumes, multi-band tiles and spectrograms from `.npy`, `.npz` and TIFF files.

Layout as image folders (`root/CLASS/item.npy`, loose files unlabelled). An item is
(C, *S) or, for one channel, just S; S is (D, H, W) for volumes and (H, W) for tiles and
spectrograms. What happens to the values depends on the kind:

- `volume`: per-volume intensity normalisation (clip to the 0.5/99.5 percentiles, scale to
  0..255) and stored as uint8, like images; CT, MR and ultrasound then share one pipeline.
- `multiband`, `spectrogram`: values kept (float32), so per-band statistics from
  `mimkit data stats` (in units of value/255, the pipeline's convention) standardise them.
"""

from __future__ import annotations

import logging
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mimkit.data.folder import list_images
from mimkit.errors import DataError
from mimkit.progress import progress_interval

log = logging.getLogger(__name__)
ARRAY_EXTENSIONS = frozenset({".npy", ".npz", ".tif", ".tiff"})
NIFTI_SUFFIXES = (".nii", ".nii.gz")
VOLUME_EXTENSIONS = ARRAY_EXTENSIONS | {".nii", ".gz"}  # .gz: only .nii.gz is read
ARRAY_KINDS = ("volume", "multiband", "spectrogram")


def read_array(path: str | Path) -> np.ndarray:
    """The array in one file (never unpickled): .npy, the first entry of .npz, TIFF or NIfTI."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return read_nifti(path)
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if not archive.files:
                    raise DataError(f"{path}: empty .npz archive")
                return archive[archive.files[0]]
        if suffix in (".tif", ".tiff"):
            try:
                import tifffile  # optional dependency: mimkit[tiff]
            except ImportError as exc:
                raise DataError(
                    f"{path}: TIFF arrays need tifffile: pip install 'mimkit[tiff]'"
                ) from exc
            return tifffile.imread(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read array ({exc})") from exc
    raise DataError(f"{path}: unsupported array file; expected one of {sorted(ARRAY_EXTENSIONS)}")


def read_nifti(path: Path) -> np.ndarray:
    """A NIfTI volume as (D, H, W) = (z, y, x) float32, through nibabel (`mimkit[nifti]`)."""
    try:
        import nibabel  # optional dependency: mimkit[nifti]
    except ImportError as exc:
        raise DataError(f"{path}: NIfTI volumes need nibabel: pip install 'mimkit[nifti]'") from exc
    try:
        data = np.asarray(nibabel.load(str(path)).get_fdata(dtype=np.float32))
    except (OSError, ValueError, EOFError, nibabel.filebasedimages.ImageFileError) as exc:
        raise DataError(f"{path}: cannot read NIfTI volume ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: NIfTI volume of shape {data.shape}; expected 3-D (x, y, z)")
    return np.ascontiguousarray(data.transpose(2, 1, 0))


class BadItem(DataError):
    """One item that cannot be used, with the reason it is counted under when skipped."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_values(array: np.ndarray, path: Path) -> np.ndarray:
    """Real, finite numbers only: strings, objects, complex values, NaN and inf are refused."""
    if array.dtype.kind not in "biuf":
        raise BadItem("dtype", f"{path}: array of type {array.dtype}; expected real numbers")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        raise BadItem("non_finite", f"{path}: {bad} NaN or inf value(s)")
    if array.size == 0:
        raise BadItem("shape", f"{path}: empty array of shape {array.shape}")
    return array


def center_crop_first(item: np.ndarray, depth: int) -> np.ndarray:
    """(C, D, H, W) cut to `depth` slices around the middle (deeper volumes in a folder)."""
    start = (item.shape[1] - depth) // 2
    return item[:, start : start + depth]


def normalize_intensity(volume: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Per-volume intensity normalisation to uint8: clip to percentiles, scale to 0..255."""
    lo, hi = np.percentile(volume, [low, high])
    scaled = (volume.astype(np.float32) - lo) / max(float(hi - lo), 1e-8)
    return (np.clip(scaled, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def to_item(array: np.ndarray, channels: int, spatial: int, path: Path) -> np.ndarray:
    """(C, *S) with C == `channels`, from (C, *S) or (*S) when one channel; TIFF (H, W, C) too."""
    if array.ndim == spatial:
        array = array[None]
    elif array.ndim == spatial + 1 and array.shape[0] != channels and array.shape[-1] == channels:
        array = np.moveaxis(array, -1, 0)  # TIFF tiles are usually (H, W, bands)
    if array.ndim != spatial + 1 or array.shape[0] != channels:
        raise BadItem(
            "shape",
            f"{path}: array of shape {array.shape}; expected ({channels}, {spatial}-D size) "
            f"for model.in_chans={channels}",
        )
    return array


def load_array_folder(
    folder: Path,
    kind: str,
    channels: int,
    size: tuple[int, ...],
    progress: bool = True,
    skipped_by: Counter[str] | None = None,
    on_bad: str = "skip",
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(items (N, C, *size), labels, skipped): every array under `folder`, sized exactly `size`.

    Volumes deeper than `size[0]` are cut to it around their middle. Unusable files are
    skipped and counted by reason in `skipped_by`, or refused with `on_bad="fail"`.
    """
    if kind not in ARRAY_KINDS:
        raise DataError(f"data.source: unknown array kind {kind!r}; expected one of {ARRAY_KINDS}")
    extensions = VOLUME_EXTENSIONS if kind == "volume" else ARRAY_EXTENSIONS
    files, labels, _ = list_images(folder, extensions)
    items, kept, skipped = [], [], 0
    bar = tqdm(
        files,
        desc=f"read {kind}s",
        unit="file",
        disable=not progress,
        mininterval=progress_interval(),
    )
    for path, label in zip(bar, labels, strict=True):
        try:
            item = to_item(check_values(read_array(path), path), channels, len(size), path)
            if kind == "volume" and item.shape[1] > size[0]:
                item = center_crop_first(item, size[0])
            if tuple(item.shape[1:]) != tuple(size):
                raise BadItem(
                    "size", f"{path}: size {item.shape[1:]} but the model expects {tuple(size)}"
                )
        except DataError as exc:
            if on_bad == "fail":
                raise DataError(f"{exc} (data.on_bad_item=fail)") from None
            skipped += 1
            if skipped_by is not None:
                skipped_by[getattr(exc, "reason", "unreadable")] += 1
            log.warning("skipped %s", exc)
            continue
        items.append(normalize_intensity(item) if kind == "volume" else item.astype(np.float32))
        kept.append(label)
    if skipped:
        log.warning(
            "%s: skipped %d unreadable or unfitting array(s) of %d", folder, skipped, len(files)
        )
    if not items:
        raise DataError(f"{folder}: none of {len(files)} arrays could be used")
    return torch.from_numpy(np.stack(items)), torch.tensor(kept, dtype=torch.int64), skipped


def band_stats(items: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, C, ...) items in the pipeline's units (value / 255)."""
    x = items.float().transpose(0, 1).reshape(items.shape[1], -1) / 255.0
    if not torch.isfinite(x).all():
        raise DataError("data stats: the items hold NaN or inf values; no statistics written")
    if x.shape[1] < 2:  # one value per channel: no spread to measure
        raise DataError(f"data stats: {x.shape[1]} value(s) per channel are too few for a std")
    mean = x.mean(dim=1, dtype=torch.float64)
    std = x.std(dim=1).double().clamp_min(1e-12)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]
