"""DICOM files (pydicom, `mimkit[dicom]`) as uint8 images, volumes or clips.

`data.source: dicom` reads every `.dcm` file under `data.path` (class subfolders as for image
folders). With a 2-D model each frame is one image; with a 3-D model (`model.img_size:
[T or D, H, W]`) a multi-frame file is one volume or clip, its frames along the first axis.

Each file goes through the DICOM display pipeline, in order:
1. the stored values (`pixel_array`, uncompressed or with an installed decoder);
2. grey images: the modality rescale `value * RescaleSlope + RescaleIntercept` (Hounsfield
   units for CT), then the linear window (DICOM PS3.3 C.11.2.1.2) of `data.dicom_window:
   [centre, width]` when set, else the file's WindowCenter/WindowWidth (the first pair), else
   the file's own value range; MONOCHROME1 (0 = white, as in some radiographs) is inverted so
   that 255 is always bright;
3. colour (RGB, YBR_FULL, YBR_FULL_422 as ultrasound writes them): converted to RGB as stored
   (YBR via the ITU-R BT.601 full-range matrix), scaled to 0..255 when stored with more bits.

Results are uint8 (frames, C, H, W), C = 1 or 3. Files that cannot be used raise `BadItem`
with one line naming the file and why (no pixel data, a compressed transfer syntax without a
decoder, an unsupported photometric interpretation), counted by the folder reader.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from mimkit.data.arrays import BadItem, read_each
from mimkit.data.folder import list_images
from mimkit.errors import DataError

log = logging.getLogger(__name__)

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _pydicom():
    try:
        import pydicom  # optional dependency: mimkit[dicom]
    except ImportError as exc:
        raise DataError("DICOM files need pydicom: pip install 'mimkit[dicom]'") from exc
    return pydicom


def read_dicom(path: str | Path, window: list[float] | None = None) -> np.ndarray:
    """uint8 (frames, C, H, W) of one DICOM file, through rescale, window and photometry."""
    pydicom = _pydicom()
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise BadItem("unreadable", f"{path}: not a readable DICOM file ({exc})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise BadItem("no_pixels", f"{path}: no pixel data (a DICOM without an image)")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in GREY + COLOUR:
        raise BadItem(
            "photometric",
            f"{path}: photometric interpretation {photometric or 'missing'!r}; expected one of "
            f"{', '.join(GREY + COLOUR)}",
        )
    stored = _stored_values(pydicom, ds, path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if photometric in GREY:
        stored = stored.reshape(frames, 1, *stored.shape[-2:])
        return _grey_to_uint8(stored, ds, photometric, window, path)
    stored = stored.reshape(frames, *stored.shape[-3:])  # (F, H, W, 3), colour-by-pixel
    if photometric.startswith("YBR"):
        stored = pydicom.pixels.convert_color_space(stored, photometric, "RGB", per_frame=True)
    bits = int(ds.get("BitsStored", 8) or 8)
    rgb = stored.astype(np.float32) * (255.0 / (2**bits - 1)) if bits != 8 else stored
    return np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2))


def _stored_values(pydicom, ds, path: Path) -> np.ndarray:
    """The stored pixel values, undecoded colour space (`raw`); a syntax with no installed
    decoder is one line naming the syntax and what to install."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        return pydicom.pixels.pixel_array(ds, raw=True)
    except (NotImplementedError, RuntimeError) as exc:
        name = getattr(syntax, "name", str(syntax))
        raise BadItem(
            "transfer_syntax",
            f"{path}: transfer syntax {name} ({syntax}) cannot be decoded here ({_first_line(exc)});"
            " install a decoder plugin such as pylibjpeg or gdcm, or store it uncompressed",
        ) from None
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise BadItem("unreadable", f"{path}: cannot decode pixel data ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _grey_to_uint8(
    stored: np.ndarray, ds, photometric: str, window: list[float] | None, path: Path
) -> np.ndarray:
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    values = stored.astype(np.float32) * slope + intercept
    centre, width = _window(ds, window, values, path)
    out = apply_window(values, centre, width)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return np.ascontiguousarray(out)


def _window(ds, window: list[float] | None, values: np.ndarray, path: Path) -> tuple[float, float]:
    """The setting's window, else the file's first WindowCenter/WindowWidth, else its range."""
    if window is not None:
        return float(window[0]), float(window[1])
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is not None and width is not None:
        centre = centre[0] if isinstance(centre, (list, tuple)) or _multi(centre) else centre
        width = width[0] if isinstance(width, (list, tuple)) or _multi(width) else width
        if float(width) >= 1:
            return float(centre), float(width)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        raise BadItem("constant", f"{path}: every pixel has the value {low}; nothing to show")
    return (low + high + 1) / 2, high - low + 1


def _multi(value) -> bool:
    return type(value).__name__ == "MultiValue"


def apply_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM's linear VOI window onto 0..255 (PS3.3 C.11.2.1.2.1), for width >= 1."""
    if width < 1:
        raise DataError(f"data.dicom_window: width {width} must be >= 1")
    scaled = ((values - (centre - 0.5)) / (width - 1) + 0.5) * 255.0 if width > 1 else None
    if scaled is None:  # width 1: a threshold at the centre
        scaled = np.where(values > centre - 0.5, 255.0, 0.0)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def dicom_items(
    path: Path, window: list[float] | None, channels: int, frames_as_items: bool
) -> list[np.ndarray]:
    """One file's items: its frames as (C, H, W) images, or the whole file as (C, F, H, W)."""
    array = read_dicom(path, window)  # (F, C, H, W)
    if array.shape[1] != channels:
        if channels == 3 and array.shape[1] == 1:
            array = np.repeat(array, 3, axis=1)  # grey shown on an RGB model
        elif channels == 1 and array.shape[1] == 3:  # ITU-R 601 luma, as PIL's "L"
            luma = np.tensordot(array.astype(np.float32), LUMA, axes=([1], [0]))
            array = np.round(luma)[:, None].clip(0, 255).astype(np.uint8)
        else:
            raise BadItem(
                "shape", f"{path}: {array.shape[1]} channel(s); model.in_chans={channels}"
            )
    if frames_as_items:
        return list(array)
    return [np.ascontiguousarray(array.transpose(1, 0, 2, 3))]


def load_dicom_folder(
    folder: Path,
    channels: int,
    size: tuple[int, int],
    window: list[float] | None = None,
    as_volumes: bool = False,
    skipped_by: Counter[str] | None = None,
    on_bad: str = "skip",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 items, labels) of every DICOM file under `folder`: frames as (N, C, H, W)
    images, or with `as_volumes` each file as one (C, F, H, W) volume or clip (cut to the
    fewest frames among them so they stack; the model's depth is cropped on the device).
    Unusable files are skipped and counted by reason, or refused with `on_bad="fail"`."""
    _pydicom()  # a missing pydicom is one line, before any file is tried
    files, labels, _ = list_images(folder, DICOM_EXTENSIONS)

    def read(path: Path) -> list[np.ndarray]:
        found = dicom_items(path, window, channels, frames_as_items=not as_volumes)
        if tuple(found[0].shape[-2:]) != tuple(size):
            raise BadItem(
                "size", f"{path}: frames of {found[0].shape[-2:]} but the model expects {size}"
            )
        return found

    items, kept, skipped = read_each(files, labels, read, "read DICOM", on_bad, skipped_by, progress)
    if skipped:
        log.warning("%s: skipped %d unusable DICOM file(s) of %d", folder, skipped, len(files))
    if not items:
        raise DataError(f"{folder}: none of {len(files)} DICOM files could be used")
    if as_volumes:
        depth = min(item.shape[1] for item in items)
        items = [item[:, :depth] for item in items]
    return torch.from_numpy(np.stack(items)), torch.tensor(kept, dtype=torch.int64)
