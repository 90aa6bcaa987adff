"""Test data made here: moving Fashion-MNIST videos, synthetic volumes, tiles, spectrograms.

Everything is a pure function of a seed and is written under `root/train/CLASS/` and
`root/test/CLASS/`, the layout the folder sources read. Nothing generated is committed.

- moving Fashion-MNIST: one 28x28 item drifting across a square canvas with constant velocity,
  bouncing off the walls; the label is the item's class. Written as H.264 .mp4 with PyAV.
- volumes: a bright ball, cube or rod (the class) at a random place in noise, `.npy` (D, H, W)
  with a random intensity scale and offset per volume, as scanners differ.
- tiles: multi-band `.npy` or `.tif` (bands, H, W) whose class decides which bands carry a
  smooth pattern, with band-specific offsets so per-band statistics matter.
- spectrograms: log-mel-like (1, mels, frames) arrays of harmonic stacks; the class is the
  fundamental's band.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mimkit.data.idx import load_fashion_mnist
from mimkit.data.video import write_video
from mimkit.progress import progress_interval

log = logging.getLogger(__name__)


def _bar(total: int, desc: str, progress: bool) -> tqdm:
    return tqdm(
        total=total, desc=desc, unit="item", disable=not progress, mininterval=progress_interval()
    )


def moving_clip(item: np.ndarray, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (frames, size, size): `item` (h, w) moving at constant velocity, bouncing."""
    h, w = item.shape
    room_y, room_x = size - h, size - w
    pos = rng.uniform([0, 0], [room_y, room_x])
    speed = rng.uniform(1.0, 3.0) * (size / 64)
    angle = rng.uniform(0, 2 * np.pi)
    vel = np.array([np.sin(angle), np.cos(angle)]) * max(speed, 0.75)
    clip = np.zeros((frames, size, size), dtype=np.uint8)
    for t in range(frames):
        y, x = int(round(pos[0])), int(round(pos[1]))
        clip[t, y : y + h, x : x + w] = np.maximum(clip[t, y : y + h, x : x + w], item)
        pos = pos + vel
        for axis, room in enumerate((room_y, room_x)):
            if pos[axis] < 0 or pos[axis] > room:
                vel[axis] = -vel[axis]
                pos[axis] = np.clip(pos[axis], 0, room)
    return clip


def make_moving_fmnist(
    root: str | Path,
    train: int = 400,
    test: int = 200,
    frames: int = 16,
    size: int = 64,
    seed: int = 0,
    fmnist_path: str | None = None,
    progress: bool = True,
) -> Path:
    """Write moving Fashion-MNIST .mp4 clips under root/{train,test}/CLASS/."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    bar = _bar(train + test, "moving-fmnist", progress)
    for split, count in (("train", train), ("test", test)):
        images, labels = load_fashion_mnist(split, fmnist_path)
        picks = rng.choice(len(labels), size=count, replace=False)
        for n, i in enumerate(picks):
            clip = moving_clip(images[i, 0].numpy(), frames, size, rng)
            label = int(labels[i])
            write_video(root / split / f"{label}" / f"clip_{n:05d}.mp4", clip)
            bar.update()
    bar.close()
    return root


def make_volumes(
    root: str | Path,
    train: int = 60,
    test: int = 30,
    shape: tuple[int, int, int] = (16, 32, 32),
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write (D, H, W) float32 .npy volumes of three shape classes under root/{train,test}/."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    d, h, w = shape
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    bar = _bar(train + test, "volumes", progress)
    for split, count in (("train", train), ("test", test)):
        for n in range(count):
            label = n % 3
            cz, cy, cx = rng.uniform(-0.4, 0.4, 3)
            r = rng.uniform(0.25, 0.45)
            dz, dy, dx = np.abs(zz - cz), np.abs(yy - cy), np.abs(xx - cx)
            if label == 0:
                body = dz**2 + dy**2 + dx**2 < r**2  # ball
            elif label == 1:
                body = np.maximum(np.maximum(dz, dy), dx) < r * 0.8  # cube
            else:
                body = (dy**2 + dx**2 < (r / 3) ** 2) & (dz < 0.8)  # rod along depth
            volume = body * 1.0 + rng.normal(0, 0.15, shape)
            volume = volume * rng.uniform(200, 2000) + rng.uniform(-1000, 100)  # scanner units
            path = root / split / f"{label}" / f"vol_{n:05d}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, volume.astype(np.float32))
            bar.update()
    bar.close()
    return root


def make_tiles(
    root: str | Path,
    train: int = 60,
    test: int = 30,
    bands: int = 6,
    size: int = 32,
    fmt: str = "npy",
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write (bands, H, W) uint16 tiles (.npy or .tif) of three classes under root/{train,test}/."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    bar = _bar(train + test, "tiles", progress)
    for split, count in (("train", train), ("test", test)):
        for n in range(count):
            label = n % 3
            tile = make_tile(label, bands, size, rng)
            path = root / split / f"{label}" / f"tile_{n:05d}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "npy":
                np.save(path, tile)
            else:
                import tifffile  # optional dependency: mimkit[tiff]

                tifffile.imwrite(path, tile)
            bar.update()
    bar.close()
    return root


def make_tile(label: int, bands: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint16 (bands, size, size): band offsets and noise, and a smooth pattern on the bands
    the class (0-2) picks (every third band from `label`)."""
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    offsets = np.linspace(500, 3000, bands)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi)
    freq = rng.uniform(2, 5)
    pattern = np.sin(2 * np.pi * freq * (xx + yy) + phase)
    tile = offsets + rng.normal(0, 50, (bands, size, size))
    tile[label::3] += 400 * pattern  # the class decides which bands carry the pattern
    return np.clip(tile, 0, 65535).astype(np.uint16)


def make_spectrograms(
    root: str | Path,
    train: int = 60,
    test: int = 30,
    mels: int = 32,
    frames: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write (1, mels, frames) float32 log-mel-like .npy arrays of three pitch classes."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    mel = np.arange(mels)[:, None]
    bar = _bar(train + test, "spectrograms", progress)
    for split, count in (("train", train), ("test", test)):
        for n in range(count):
            label = n % 3
            base = (label + 1) * mels / 8 + rng.uniform(-1, 1)
            onset = rng.integers(0, frames // 2)
            power = np.zeros((mels, frames))
            for k in (1, 2, 3):
                power += np.exp(-((mel - base * k) ** 2) / 2.0) / k
            power[:, :onset] *= 0.05
            log_mel = 10 * np.log10(power + 1e-3) + rng.normal(0, 1.0, (mels, frames))
            path = root / split / f"{label}" / f"spec_{n:05d}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, log_mel[None].astype(np.float32))
            bar.update()
    bar.close()
    return root
