"""Fashion-MNIST scenes: a small, real dense benchmark that runs on a CPU.

Each scene is a square grey canvas with a textured background (random low-frequency gratings
plus noise) and 2-4 real Fashion-MNIST items, each rescaled, placed at random and drawn over
the ones before it (occlusion). The label map gives every pixel its class: 0 background, 1-10
the Fashion-MNIST classes. An item's faint fringe (ink between `FRINGE` and `INK` of 255) is
neither clearly item nor background and is labelled `IGNORE_INDEX`. Training scenes use items
of Fashion-MNIST's training split, validation scenes items of its test split, so no item is
in both. Everything is a pure function of the seed.

Written in the layout `mimkit.data.segmentation` reads (ADE20K/Cityscapes style):
`root/images/{train,val}/scene_NNNNN.png`, `root/annotations/{train,val}/scene_NNNNN.png`,
`root/classes.txt` (one class name per line, the line number is the label) and
`root/dataset.json` (ignore index, seed, sizes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mimkit.data.idx import load_fashion_mnist
from mimkit.errors import ConfigError
from mimkit.progress import progress_interval

FASHION_MNIST_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
SCENE_CLASSES = ("background", *FASHION_MNIST_CLASSES)
IGNORE_INDEX = 255
INK = 40  # item pixels at least this bright are the item
FRINGE = 10  # pixels between FRINGE and INK are the ambiguous edge: ignored


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """float (size, size) texture in [0, 90]: two random gratings and pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    tex = np.full((size, size), rng.uniform(10, 50))
    for _ in range(2):
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase)
        tex += rng.uniform(5, 20) * wave
    tex += rng.normal(0, 6, (size, size))
    return tex.clip(0, 90)


def rescaled(item: np.ndarray, scale: float) -> np.ndarray:
    side = max(8, round(item.shape[0] * scale))
    return np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR))


def compose_scene(
    items: np.ndarray, classes: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (size, size), labels uint8 (size, size)) with `items` drawn in order, each
    over the ones before it; `classes` are their Fashion-MNIST classes (0-9)."""
    image = background(size, rng)
    labels = np.zeros((size, size), dtype=np.uint8)
    for item, cls in zip(items, classes, strict=True):
        patch = rescaled(item, rng.uniform(0.8, 1.3) * size / 64).astype(np.float64)
        side = patch.shape[0]
        y, x = rng.integers(0, size - side + 1, 2) if side < size else (0, 0)
        patch = patch[: size - y, : size - x]
        region = (slice(y, y + patch.shape[0]), slice(x, x + patch.shape[1]))
        ink, fringe = patch >= INK, (patch >= FRINGE) & (patch < INK)
        image[region] = np.where(ink, patch, image[region])
        image[region] = np.where(fringe, np.maximum(patch, image[region]), image[region])
        labels[region] = np.where(ink, cls + 1, np.where(fringe, IGNORE_INDEX, labels[region]))
    return image.round().clip(0, 255).astype(np.uint8), labels


def make_fmnist_scenes(
    root: str | Path,
    train: int = 1000,
    test: int = 300,
    size: int = 64,
    seed: int = 0,
    fmnist_path: str | None = None,
    progress: bool = True,
) -> Path:
    """Write `train` training and `test` validation scenes of `size` px under `root`.

    `fmnist_path`: a folder of Fashion-MNIST-like IDX files (checksums not verified); by
    default the real data set from the usual places (Debian's package first), verified.
    """
    if size < 32:
        raise ConfigError(f"fmnist-scenes: --size must be >= 32 (items are 28 px), got {size}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    bar = tqdm(
        total=train + test,
        desc="fmnist-scenes",
        unit="scene",
        disable=not progress,
        mininterval=progress_interval(),
    )
    for split, source, count in (("train", "train", train), ("val", "test", test)):
        images, classes = load_fashion_mnist(source, fmnist_path, verify=fmnist_path is None)
        images, classes = images[:, 0].numpy(), classes.numpy()
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for n in range(count):
            picks = rng.choice(len(classes), size=int(rng.integers(2, 5)), replace=False)
            image, labels = compose_scene(images[picks], classes[picks], size, rng)
            name = f"scene_{n:05d}.png"
            Image.fromarray(image, mode="L").save(root / "images" / split / name)
            Image.fromarray(labels, mode="L").save(root / "annotations" / split / name)
            bar.update()
    bar.close()
    (root / "classes.txt").write_text("\n".join(SCENE_CLASSES) + "\n")
    meta = dict(ignore_index=IGNORE_INDEX, seed=seed, size=size, train=train, val=test)
    (root / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
    return root
