"""The `data` section of a run config: where items come from and how they are augmented.

It lives with the data code (not in `mimkit.config`) so that data readers never import the
run config; `mimkit.config.RunConfig` composes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mimkit.errors import ConfigError

# sources whose items are 2-D images (H, W) and those with a third axis (T or D); `multi`:
# several aligned inputs per sample (modalities, or two views), one sub-folder each (data.inputs)
FLAT_SOURCES = (
    "fashion_mnist", "idx", "folder", "multiband", "spectrogram", "dicom", "geotiff", "packed",
    "hf", "multi",
)  # fmt: skip
DEEP_SOURCES = ("video", "volume", "dicom_volume")
POINT_SOURCES = ("points",)  # clouds (N, points, 3): no image size, no pixel statistics
SOURCES = FLAT_SOURCES + DEEP_SOURCES + POINT_SOURCES
BAD_ITEM_POLICIES = ("skip", "fail")
DECODE_MODES = ("cpu", "gpu", "auto")  # image folders' JPEG decoding (data.decode)
INTERPOLATIONS = ("bilinear", "nearest")


@dataclass
class InputConfig:
    """One input of a sample with several (`data.inputs.NAME`): a modality or one of two views.

    Its files are in the sub-folder NAME of each split (images, or .npy/.npz/TIFF arrays whose
    values are kept; or its array is the key NAME of each sample's .npz), paired with the other
    inputs' files by sample id (class folder and file stem). `mean`/`std` are in the pipeline's
    units (value / 255), one per channel or one for all; `mimkit data stats --source multi`
    measures them. Crops and flips are the same for every input of a sample;
    `interpolation: nearest` keeps label-like maps (segmentation) whole.
    """

    channels: int = 1
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    interpolation: str = "bilinear"

    def check(self, name: str) -> None:
        where = f"data.inputs.{name}"
        if self.channels < 1:
            raise ConfigError(f"{where}.channels must be >= 1, got {self.channels}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) not in (1, self.channels):
                raise ConfigError(
                    f"{where}.{key} has {len(values)} values; expected 1 or "
                    f"{where}.channels={self.channels}"
                )
        if not all(s > 0 for s in self.std):
            raise ConfigError(f"{where}.std must be > 0 for every channel, got {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"{where}.interpolation must be one of {list(INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )


@dataclass
class DataConfig:
    """Where images come from and how they are augmented on the device."""

    # fashion_mnist | idx | folder | video | volume | multiband | spectrogram (data.modalities)
    # | points (data.points) | dicom (frames as images), dicom_volume (a multi-frame file as a
    # volume or clip: data.dicom) | geotiff (data.geotiff) | packed (`mimkit data pack` shards)
    # | hf (HF datasets on disk)
    source: str = "fashion_mnist"
    path: str | None = None  # folder of IDX files or images; None: look in the usual places
    download: bool = False  # fetch Fashion-MNIST (MD5-checked) when it is nowhere local
    limit: int | None = None  # use only the first N training items
    channels: int | None = None  # image folders: 1 (L), 3 (RGB) or 4 (RGBA); None: from the model
    mean: list[float] = field(default_factory=lambda: [0.2860])
    std: list[float] = field(default_factory=lambda: [0.3530])
    crop_scale: list[float] = field(
        default_factory=lambda: [0.2, 1.0]
    )  # random-resized-crop area range
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 4 / 3])
    hflip: bool = True
    num_workers: int = 0  # DataLoader processes decoding image folders (0: in the main process)
    decode: str = "cpu"  # image folders' JPEGs: cpu (PIL) | gpu (nvJPEG via torchvision) | auto
    shuffle_buffer: int = 0  # packed: 0 the full permutation; K the order of a K-sample stream buffer
    frame_stride: int = 1  # video: keep every n-th frame
    max_frames: int | None = None  # video: decode at most this many (strided) frames per file
    on_bad_item: str = "skip"  # an unreadable or unfitting file: skip (counted) | fail (stop)
    dicom_window: list[float] | None = None  # [centre, width]; None: each file's own window
    bands: list[int | str] | None = None  # geotiff: bands by 0-based index or name; None: all
    nodata: float | None = None  # geotiff: the nodata value; None: each file's GDAL_NODATA
    # point clouds (source: points): points per cloud and the device augmentation
    points: int = 1024
    point_scale: list[float] = field(default_factory=lambda: [0.8, 1.25])  # per-axis range
    point_translate: float = 0.1  # shift per axis, uniform in [-t, t]
    point_rotate: bool = True  # a random turn about the up (z) axis
    point_jitter: float = 0.01  # Gaussian noise per point (clipped at 5 sigma)
    # source: multi: the inputs of each sample by name (a sub-folder each), e.g.
    # {optical: {channels: 3}, radar: {channels: 2}} or {view1: {}, view2: {}}
    inputs: dict[str, InputConfig] = field(default_factory=dict)

    def check(self) -> None:
        """Refuse values no run can use, naming the field."""
        if self.source not in SOURCES:
            raise ConfigError(f"data.source must be one of {list(SOURCES)}, got {self.source!r}")
        if not all(s > 0 for s in self.std):
            raise ConfigError(f"data.std must be > 0 for every channel, got {self.std}")
        low, high = (self.crop_scale + [0.0, 0.0])[:2]
        if len(self.crop_scale) != 2 or not 0.0 < low <= high <= 1.0:
            raise ConfigError(
                f"data.crop_scale must be [min, max] with 0 < min <= max <= 1, got {self.crop_scale}"
            )
        low, high = (self.crop_ratio + [0.0, 0.0])[:2]
        if len(self.crop_ratio) != 2 or not 0.0 < low <= high or not math.isfinite(high):
            raise ConfigError(
                f"data.crop_ratio must be [min, max] with 0 < min <= max, got {self.crop_ratio}"
            )
        self._check_counts()
        if self.dicom_window is not None and (
            len(self.dicom_window) != 2 or not self.dicom_window[1] >= 1
        ):
            raise ConfigError(
                f"data.dicom_window must be [centre, width] with width >= 1, got {self.dicom_window}"
            )
        if self.bands is not None and (
            not self.bands or any(isinstance(b, int) and b < 0 for b in self.bands)
        ):
            raise ConfigError(
                f"data.bands must list band indices (>= 0) or names, got {self.bands}"
            )
        self._check_inputs()

    def _check_inputs(self) -> None:
        if (self.source == "multi") != bool(self.inputs):
            raise ConfigError(
                "data.inputs names the inputs of data.source: multi (and only of it); got "
                f"source {self.source!r} with {len(self.inputs)} input(s)"
            )
        for name, spec in self.inputs.items():
            if not name.isidentifier():
                raise ConfigError(
                    f"data.inputs: input name {name!r} must be a plain name (letters, digits, _)"
                )
            spec.check(name)

    def _check_counts(self) -> None:
        if self.decode not in DECODE_MODES:
            raise ConfigError(f"data.decode must be one of {list(DECODE_MODES)}, got {self.decode!r}")
        if self.on_bad_item not in BAD_ITEM_POLICIES:
            raise ConfigError(
                f"data.on_bad_item must be one of {list(BAD_ITEM_POLICIES)}, "
                f"got {self.on_bad_item!r}"
            )
        for name, low_ok in (("limit", 1), ("frame_stride", 1), ("max_frames", 1)):
            value = getattr(self, name)
            if value is not None and value < low_ok:
                raise ConfigError(f"data.{name} must be >= {low_ok}, got {value}")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.shuffle_buffer and self.source != "packed":
            raise ConfigError("data.shuffle_buffer applies to data.source=packed only")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.channels is not None and self.channels not in (1, 3, 4):
            raise ConfigError(f"data.channels must be 1, 3 or 4, got {self.channels}")

    def check_fits(self, in_chans: int, spatial_dims: int) -> None:
        """Refuse a data section that cannot feed a model of `in_chans` and `spatial_dims` axes
        (user configs at load; models built in code may carry a default data section). Point
        clouds have no image size or pixel statistics to fit."""
        if self.source in POINT_SOURCES:
            return
        want = 3 if self.source in DEEP_SOURCES else 2
        if spatial_dims != want:
            shape = "[T or D, H, W]" if want == 3 else "[H, W] (or one number)"
            raise ConfigError(
                f"model.img_size has {spatial_dims} entries but data.source {self.source!r} "
                f"needs {want}: {shape}"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, in_chans):
                raise ConfigError(
                    f"data.{name} has {len(values)} values; expected 1 or model.in_chans={in_chans}"
                )
