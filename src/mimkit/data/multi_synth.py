"""Data with several inputs per sample, made here (`mimkit data synth`), seeded.

Written in the layout `mimkit.data.multi` reads: `root/{train,test}/INPUT/CLASS/NAME.ext`, the
inputs of one sample sharing CLASS/NAME, and `root/inputs.json` naming the inputs (channels,
interpolation: the `data.inputs` section a config needs, statistics aside).

- `fmnist-modal`: Fashion-MNIST scenes with aligned modalities: `image` (grey, textured
  background, 1-3 items drawn over each other), `depth` (a depth-like map: a ground plane
  receding upwards, each item a slanted plate in front of it, later items nearer; 0 near,
  255 far) and `seg` (per-pixel class: 0 background, 1-10 the item classes; sample with
  `interpolation: nearest`). The class is the item class covering most pixels.
  With `layout="field"` (`--layout field`) nothing depends on absolute position, as in the
  satellite tiles CROMA's size-extrapolation claim is about: the ground is flat (no ramp),
  items keep one size in pixels (13-18 px) and may hang over the border, and their number
  grows with the area (3-5 corners per 32x32, the border's overhang included). Each scene has a class; each item is of it with
  probability `FIELD_MAJORITY`, else of any class. A larger `--size` is then a larger field
  at the same resolution with more evidence for the same class.
- `fmnist-pairs`: two views of one scene: `view1` and `view2` are crops of the model's side
  cut at two places of a scene `shift` pixels larger, so they overlap by at least
  side - shift pixels per axis; each view gets its own brightness gain and pixel noise (two
  exposures, so copying view2 is not the whole task). `offsets.csv` in each split records
  where each view was cut (id,y1,x1,y2,x2). The class is the item class covering most pixels
  of the overlap.
- `tile-groups`: the multi-band tiles of `synth tiles`, each split into two modality groups:
  the first `optical` bands (`optical/`) and the rest (`radar/`, standing in for a second
  sensor). The class sets which bands carry a pattern, so each group alone is informative.
  With `joint=True` (`--joint`) the class needs both groups: each group carries one faint,
  windowed stripe pattern (random frequency, phase, window and per-band gain, under noise)
  whose orientation is either diagonal; the class is 2 * (optical's orientation) + (radar's),
  so either group alone can tell at most two of the four classes apart (50%).

Training scenes use Fashion-MNIST's training items, test scenes its test items.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from mimkit.data.idx import load_fashion_mnist
from mimkit.data.multi import INPUTS_FILE, OFFSETS_FILE
from mimkit.data.scenes import FRINGE, INK, background, rescaled
from mimkit.data.synthetic import _bar, make_tile
from mimkit.errors import ConfigError

SPLITS = (("train", "train"), ("test", "test"))  # (folder written, Fashion-MNIST split read)
LAYOUTS = ("framed", "field")  # fmnist-modal's scene layouts


def compose_layers(
    items: np.ndarray, classes: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, depth, seg), each uint8 (size, size), of `items` (h, w) drawn in order, each
    over the ones before it; `classes` are their Fashion-MNIST classes (0-9)."""
    image = background(size, rng)
    rows = np.linspace(0.0, 1.0, size)[:, None]
    depth = np.broadcast_to(255.0 - 80.0 * rows, (size, size)).copy()  # far at the top
    seg = np.zeros((size, size), dtype=np.uint8)
    nearness = np.sort(rng.uniform(20, 150, len(items)))[::-1]  # later items nearer
    for item, cls, near in zip(items, classes, nearness, strict=True):
        patch = rescaled(item, rng.uniform(0.55, 0.9) * size / item.shape[0]).astype(np.float64)
        side = min(patch.shape[0], size)
        y, x = rng.integers(0, size - side + 1, 2)
        _draw_item((image, depth, seg), patch[:side, :side], int(cls), near, int(y), int(x))
    as_u8 = [a.round().clip(0, 255).astype(np.uint8) for a in (image, depth)]
    return as_u8[0], as_u8[1], seg


def _draw_item(
    layers: tuple[np.ndarray, np.ndarray, np.ndarray],
    patch: np.ndarray,
    cls: int,
    near: float,
    y: int,
    x: int,
) -> None:
    """Draw `patch` (float, its top-left corner at (y, x), possibly over the border) into the
    (image, depth, seg) layers in place: its ink over what is there, its fringe brightening it,
    a plate turned sideways at depth `near` where it has ink, and class `cls` + 1 there."""
    image, depth, seg = layers
    size, side = image.shape[0], patch.shape[0]
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + side, size), min(x + side, size)
    if bottom <= top or right <= left:
        return
    region = (slice(top, bottom), slice(left, right))
    part = patch[top - y : bottom - y, left - x : right - x]
    ink, fringe = part >= INK, (part >= FRINGE) & (part < INK)
    image[region] = np.where(ink, part, image[region])
    image[region] = np.where(fringe, np.maximum(part, image[region]), image[region])
    slant = near + 25.0 * np.linspace(0.0, 1.0, side)[None, left - x : right - x]
    depth[region] = np.where(ink, slant, depth[region])
    seg[region] = np.where(ink, cls + 1, seg[region])


#: `field` scenes: items per 32x32 of area (drawn in [low, high)), their side in pixels, the
#: share of items of the scene's class, and the flat ground's depth.
FIELD_ITEMS_PER_32 = (3, 6)
FIELD_ITEM_SIDE = (13, 18)
FIELD_MAJORITY = 0.6
FIELD_GROUND = 230.0


def compose_field(
    pools: list[np.ndarray], label: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, depth, seg) of a `field` scene of class `label`: `pools[c]` holds the
    Fashion-MNIST items (n, h, w) of class c. Nothing depends on absolute position: the ground
    is flat, items keep their pixel size, may hang over any border, and their count grows with
    the area."""
    image = background(size, rng)
    depth = np.full((size, size), FIELD_GROUND)
    seg = np.zeros((size, size), dtype=np.uint8)
    # Top-left corners fall anywhere in the scene grown by the largest side up and left, at the
    # same density everywhere, so the border is covered as often as the middle.
    reach = FIELD_ITEM_SIDE[1]
    per_32 = int(rng.integers(*FIELD_ITEMS_PER_32))
    count = max(1, round(per_32 * ((size + reach) / 32) ** 2))
    nearness = np.sort(rng.uniform(20, 150, count))[::-1]  # later items nearer
    for near in nearness:
        cls = label if rng.random() < FIELD_MAJORITY else int(rng.integers(10))
        item = pools[cls][rng.integers(len(pools[cls]))]
        side = int(rng.integers(FIELD_ITEM_SIDE[0], FIELD_ITEM_SIDE[1] + 1))
        patch = rescaled(item, side / item.shape[0]).astype(np.float64)
        y, x = rng.integers(-reach, size, 2)
        _draw_item((image, depth, seg), patch, cls, float(near), int(y), int(x))
    as_u8 = [a.round().clip(0, 255).astype(np.uint8) for a in (image, depth)]
    return as_u8[0], as_u8[1], seg


def dominant_class(seg: np.ndarray, fallback: int) -> int:
    """The item class (0-9) covering most pixels of `seg`; `fallback` when none shows."""
    counts = np.bincount(seg.ravel(), minlength=11)[1:11]
    return int(counts.argmax()) if counts.any() else int(fallback)


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(path)


#: Pixel noise (std) of `joint` tiles unless asked otherwise; the stripes' amplitude is 80-160.
JOINT_NOISE = 100.0


def _write_inputs(root: Path, inputs: dict[str, dict], **meta) -> None:
    text = json.dumps({"inputs": inputs, **meta}, indent=1)
    (root / INPUTS_FILE).write_text(text + "\n")


def make_fmnist_modal(
    root: str | Path,
    train: int = 1000,
    test: int = 300,
    size: int = 32,
    seed: int = 0,
    fmnist_path: str | None = None,
    progress: bool = True,
    layout: str = "framed",
) -> Path:
    """Write `train` + `test` scenes as aligned `image`, `depth` and `seg` PNGs under `root`;
    `layout` "framed" (1-3 items scaled to the scene, a ground ramp) or "field" (see the module
    docstring: nothing depends on absolute position)."""
    if size < 16:
        raise ConfigError(f"fmnist-modal: --size must be >= 16, got {size}")
    if layout not in LAYOUTS:
        raise ConfigError(
            f"fmnist-modal: --layout must be one of {', '.join(LAYOUTS)}, got {layout!r}"
        )
    root = Path(root)
    rng = np.random.default_rng(seed)
    bar = _bar(train + test, "fmnist-modal", progress)
    for (split, source), count in zip(SPLITS, (train, test), strict=True):
        images, classes = load_fashion_mnist(source, fmnist_path, verify=fmnist_path is None)
        images, classes = images[:, 0].numpy(), classes.numpy()
        pools = [images[classes == c] for c in range(10)]
        for n in range(count):
            if layout == "field":
                label = int(rng.integers(10))
                layers = compose_field(pools, label, size, rng)
            else:
                picks = rng.choice(len(classes), size=int(rng.integers(1, 4)), replace=False)
                layers = compose_layers(images[picks], classes[picks], size, rng)
                label = dominant_class(layers[2], classes[picks[-1]])
            for name, layer in zip(("image", "depth", "seg"), layers, strict=True):
                _save_png(root / split / name / f"{label}" / f"scene_{n:05d}.png", layer)
            bar.update()
    bar.close()
    _write_inputs(
        root,
        {
            "image": {"channels": 1},
            "depth": {"channels": 1},
            "seg": {"channels": 1, "interpolation": "nearest"},
        },
        kind="fmnist-modal", seed=seed, size=size, train=train, test=test,
        **({"layout": layout} if layout != "framed" else {}),
    )  # fmt: skip
    return root


def _exposure(view: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One view's own exposure: a brightness gain and pixel noise."""
    out = view.astype(np.float64) * rng.uniform(0.8, 1.2) + rng.normal(0, 4, view.shape)
    return out.round().clip(0, 255).astype(np.uint8)


def make_fmnist_pairs(
    root: str | Path,
    train: int = 2000,
    test: int = 500,
    size: int = 32,
    shift: int = 8,
    seed: int = 0,
    fmnist_path: str | None = None,
    progress: bool = True,
) -> Path:
    """Write `train` + `test` pairs of overlapping `size`-px views (`view1`, `view2`) of scenes
    `size + shift` px wide, with `offsets.csv` per split."""
    if size < 16 or not 0 <= shift <= size // 2:
        raise ConfigError(
            f"fmnist-pairs: --size must be >= 16 and --shift in [0, size/2], got {size}, {shift}"
        )
    root = Path(root)
    rng = np.random.default_rng(seed)
    canvas = size + shift
    bar = _bar(train + test, "fmnist-pairs", progress)
    for (split, source), count in zip(SPLITS, (train, test), strict=True):
        images, classes = load_fashion_mnist(source, fmnist_path, verify=fmnist_path is None)
        images, classes = images[:, 0].numpy(), classes.numpy()
        rows = ["id,y1,x1,y2,x2"]
        for n in range(count):
            picks = rng.choice(len(classes), size=int(rng.integers(1, 3)), replace=False)
            image, _, seg = compose_layers(images[picks], classes[picks], canvas, rng)
            (y1, x1), (y2, x2) = rng.integers(0, shift + 1, (2, 2))
            top, left = max(y1, y2), max(x1, x2)
            overlap = seg[top : min(y1, y2) + size, left : min(x1, x2) + size]
            label = dominant_class(overlap, classes[picks[-1]])
            name = f"{label}/pair_{n:05d}"
            for view, (y, x) in (("view1", (y1, x1)), ("view2", (y2, x2))):
                crop = _exposure(image[y : y + size, x : x + size], rng)
                _save_png(root / split / view / f"{name}.png", crop)
            rows.append(f"{name},{y1},{x1},{y2},{x2}")
            bar.update()
        (root / split / OFFSETS_FILE).write_text("\n".join(rows) + "\n")
    bar.close()
    _write_inputs(
        root, {"view1": {"channels": 1}, "view2": {"channels": 1}},
        kind="fmnist-pairs", seed=seed, size=size, shift=shift, train=train, test=test,
    )  # fmt: skip
    return root


def make_tile_groups(
    root: str | Path,
    train: int = 300,
    test: int = 150,
    bands: int = 6,
    optical: int | None = None,
    size: int = 32,
    seed: int = 0,
    progress: bool = True,
    joint: bool = False,
    noise: float = JOINT_NOISE,
) -> Path:
    """Write multi-band tiles split into `optical/` (the first `optical` bands, default half)
    and `radar/` (the rest), uint16 .npy (C, H, W) each. `joint`: four classes that need both
    groups (see the module docstring) instead of three that either group tells; `noise` is
    their pixel noise's std (the stripes' amplitude is 80-160)."""
    optical = bands // 2 if optical is None else optical
    if joint and not 0.0 <= noise <= 10_000.0:
        raise ConfigError(f"tile-groups: --noise must be in [0, 10000], got {noise}")
    if bands < 2 or not 1 <= optical < bands:
        raise ConfigError(
            f"tile-groups: needs --bands >= 2 and 1 <= --optical-bands < bands, got {bands}, "
            f"{optical}"
        )
    root = Path(root)
    rng = np.random.default_rng(seed)
    bar = _bar(train + test, "tile-groups", progress)
    for split, count in (("train", train), ("test", test)):
        for n in range(count):
            label = n % (4 if joint else 3)
            if joint:
                tile = joint_tile(label, bands, optical, size, rng, noise)
            else:
                tile = make_tile(label, bands, size, rng)
            for group, part in (("optical", tile[:optical]), ("radar", tile[optical:])):
                path = root / split / group / f"{label}" / f"tile_{n:05d}.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, part)
            bar.update()
    bar.close()
    _write_inputs(
        root, {"optical": {"channels": optical}, "radar": {"channels": bands - optical}},
        kind="tile-groups", seed=seed, size=size, bands=bands, train=train, test=test,
        joint=joint, **({"noise": noise} if joint else {}),
    )  # fmt: skip
    return root


def joint_tile(
    label: int,
    bands: int,
    optical: int,
    size: int,
    rng: np.random.Generator,
    noise: float = JOINT_NOISE,
) -> np.ndarray:
    """uint16 (bands, size, size) of `joint` class `label` (0-3): band offsets and noise (std
    `noise`, 100 by default), and in each group a stripe pattern of amplitude 80-160 inside a random window of at
    least half the side, along x + y (orientation 0) or x - y (1). Optical's orientation is
    label // 2, radar's label % 2. The pattern's frequency, phase, window and per-band gains are
    drawn per group, so no fixed pixel tells the orientation: a model must see the stripes. The
    stripes' period is set in pixels (2.5-5 cycles per 32 pixels), so a larger tile is a larger
    scene at the same resolution: what a size-extrapolation check needs."""
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    tile = np.linspace(500, 3000, bands)[:, None, None] + rng.normal(0, noise, (bands, size, size))
    for group, orientation in ((slice(0, optical), label // 2), (slice(optical, bands), label % 2)):
        freq, phase = rng.uniform(2.5, 5) * size / 32, rng.uniform(0, 2 * np.pi)
        along = xx + yy if orientation == 0 else xx - yy
        pattern = np.sin(2 * np.pi * freq * along + phase)
        side = int(rng.integers(size // 2, size + 1))
        y, x = rng.integers(0, size - side + 1, 2)
        window = np.zeros((size, size))
        window[y : y + side, x : x + side] = 1.0
        count = len(range(bands)[group])
        gains = rng.uniform(80, 160, count) * rng.choice([-1.0, 1.0], count)
        tile[group] += gains[:, None, None] * (pattern * window)[None]
    return np.clip(tile, 0, 65535).astype(np.uint16)
