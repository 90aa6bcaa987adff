"""GeoTIFF tiles (tifffile, `mimkit[geotiff]`) as float32 multi-band items with nodata kept out.

`data.source: geotiff` reads every `.tif`/`.tiff` under `data.path` (class subfolders as for
image folders). Values are kept as they are (float32), like `multiband`: per-band statistics
from `mimkit data stats` standardise them.

- Bands: `data.bands` picks and orders them, by 0-based index or by name (the band
  descriptions GDAL writes into the GDAL_METADATA tag, e.g. `[B04, B03, B02]`); unset: all.
- Nodata: `data.nodata` when set, else the file's GDAL_NODATA tag. Nodata pixels become NaN in
  the items. `mimkit data stats` leaves them out of the means and deviations; pretraining
  leaves every patch that touches one out of the loss (MAE: the patch's loss weight is 0, see
  `mimkit.train.loop.MaskedLoss`) and shows the encoder the band mean (0 after normalisation)
  there; features for evaluation read them as the band mean too.
- A tile where every pixel of a chosen band is nodata is skipped and counted (`nodata`).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from mimkit.data.arrays import BadItem, read_each
from mimkit.data.folder import list_images
from mimkit.errors import DataError

log = logging.getLogger(__name__)
GEOTIFF_EXTENSIONS = frozenset({".tif", ".tiff"})
GDAL_METADATA, GDAL_NODATA = 42112, 42113  # the TIFF tags GDAL writes
NODATA_SOURCES = ("geotiff",)  # sources whose items may hold NaN for nodata


def _tifffile():
    try:
        import tifffile  # optional dependency: mimkit[geotiff]
    except ImportError as exc:
        raise DataError("GeoTIFF files need tifffile: pip install 'mimkit[geotiff]'") from exc
    return tifffile


def read_geotiff(path: str | Path) -> tuple[np.ndarray, list[str | None], float | None]:
    """(bands (C, H, W) float32, band names (None where unnamed), the file's nodata value)."""
    tifffile = _tifffile()
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array = series.asarray()
            axes = series.axes
            tags = tif.pages[0].tags
            nodata = _nodata(tags.get(GDAL_NODATA), path)
            names = _band_names(tags.get(GDAL_METADATA))
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as exc:
        raise BadItem("unreadable", f"{path}: not a readable TIFF ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise BadItem("dtype", f"{path}: samples of type {array.dtype}; expected real numbers")
    bands = _to_bands(array, axes, path)
    names = (names + [None] * bands.shape[0])[: bands.shape[0]]
    return bands.astype(np.float32, copy=False), names, nodata


def _to_bands(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """(C, H, W) from tifffile's axes: YX, YXS (contiguous) or SYX/CYX/QYX (planar)."""
    if axes == "YX":
        return array[None]
    if len(axes) == 3 and axes.endswith("YX"):
        return array
    if axes == "YXS":
        return np.moveaxis(array, -1, 0)
    raise BadItem("shape", f"{path}: TIFF axes {axes!r} {array.shape}; expected one 2-D raster")


def _nodata(tag, path: Path) -> float | None:
    if tag is None:
        return None
    text = str(tag.value).strip().strip("\x00")
    try:
        return float(text)
    except ValueError:
        raise BadItem("nodata", f"{path}: GDAL_NODATA {text!r} is not a number") from None


def _band_names(tag) -> list[str | None]:
    """Band descriptions from GDAL's metadata XML: <Item name="DESCRIPTION" sample="i"
    role="description">NAME</Item>; an unreadable block gives no names (bands by index)."""
    if tag is None:
        return []
    try:
        root = ET.fromstring(str(tag.value).strip().strip("\x00"))
    except ET.ParseError:
        return []
    names: dict[int, str] = {}
    for item in root.iter("Item"):
        if item.get("role") == "description" and item.get("sample", "").isdigit():
            names[int(item.get("sample"))] = (item.text or "").strip()
    return [names.get(i) for i in range(max(names) + 1)] if names else []


def select_bands(
    bands: np.ndarray, names: list[str | None], wanted: list[int | str] | None, path: Path
) -> np.ndarray:
    """The bands `wanted` (indices or names), in that order; all of them when None."""
    if wanted is None:
        return bands
    picked = []
    for band in wanted:
        if isinstance(band, str):
            if band not in names:
                known = ", ".join(n for n in names if n) or "none"
                raise BadItem("band", f"{path}: no band named {band!r} (named bands: {known})")
            band = names.index(band)
        if not 0 <= band < bands.shape[0]:
            raise BadItem("band", f"{path}: band {band} asked, the file has {bands.shape[0]}")
        picked.append(bands[band])
    return np.stack(picked)


def geotiff_item(
    path: Path, wanted: list[int | str] | None, nodata: float | None, channels: int
) -> np.ndarray:
    """One tile as float32 (C, H, W), nodata (the setting's, else the file's) as NaN."""
    bands, names, file_nodata = read_geotiff(path)
    bands = select_bands(bands, names, wanted, path)
    if bands.shape[0] != channels:
        raise BadItem(
            "shape",
            f"{path}: {bands.shape[0]} band(s) selected; model.in_chans={channels} (data.bands)",
        )
    value = nodata if nodata is not None else file_nodata
    invalid = ~np.isfinite(bands)
    if value is not None:
        invalid |= bands == np.float32(value)
    if invalid.reshape(len(bands), -1).all(axis=1).any():
        raise BadItem("nodata", f"{path}: a selected band is nodata ({value}) everywhere")
    bands = bands.copy()
    bands[invalid] = np.nan
    return bands


def load_geotiff_folder(
    folder: Path,
    channels: int,
    size: tuple[int, int],
    wanted: list[int | str] | None = None,
    nodata: float | None = None,
    skipped_by: Counter[str] | None = None,
    on_bad: str = "skip",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 tiles (N, C, H, W) with NaN at nodata, labels) of every GeoTIFF under `folder`;
    unusable tiles skipped and counted by reason, or refused with `on_bad="fail"`."""
    _tifffile()
    files, labels, _ = list_images(folder, GEOTIFF_EXTENSIONS)

    def read(path: Path) -> list[np.ndarray]:
        item = geotiff_item(path, wanted, nodata, channels)
        if tuple(item.shape[1:]) != tuple(size):
            raise BadItem("size", f"{path}: {item.shape[1:]} but the model expects {size}")
        return [item]

    items, kept, skipped = read_each(files, labels, read, "read GeoTIFF", on_bad, skipped_by, progress)
    if skipped:
        log.warning("%s: skipped %d unusable GeoTIFF file(s) of %d", folder, skipped, len(files))
    if not items:
        raise DataError(f"{folder}: none of {len(files)} GeoTIFF files could be used")
    return torch.from_numpy(np.stack(items)), torch.tensor(kept, dtype=torch.int64)


def fill_nodata(items: torch.Tensor, mean: list[float]) -> torch.Tensor:
    """Items with nodata (NaN) set to the band mean (`data.mean`, in value/255 units)."""
    if not items.is_floating_point():
        return items
    shape = (1, -1) + (1,) * (items.ndim - 2)
    means = torch.tensor(mean, dtype=items.dtype).view(shape) * 255.0
    return torch.where(torch.isnan(items), means.expand_as(items), items)
