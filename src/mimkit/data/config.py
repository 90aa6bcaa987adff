"""The `data` section of a run config: where items come from and how they are augmented.

It lives with the data code (not in `mimkit.config`) so that data readers never import the
run config; `mimkit.config.RunConfig` composes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    """Where images come from and how they are augmented on the device."""

    # fashion_mnist | idx | folder | video | volume | multiband | spectrogram (data.modalities)
    # | points (data.points)
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
    frame_stride: int = 1  # video: keep every n-th frame
    max_frames: int | None = None  # video: decode at most this many (strided) frames per file
    # point clouds (source: points): points per cloud and the device augmentation
    points: int = 1024
    point_scale: list[float] = field(default_factory=lambda: [0.8, 1.25])  # per-axis range
    point_translate: float = 0.1  # shift per axis, uniform in [-t, t]
    point_rotate: bool = True  # a random turn about the up (z) axis
    point_jitter: float = 0.01  # Gaussian noise per point (clipped at 5 sigma)
