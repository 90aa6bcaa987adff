"""`mimkit data synth shapes`: a seeded point-cloud benchmark of 12 parametric shape classes.

Each cloud is points on a shape's surface (or along a curve, thickened), then deformed (random
per-axis stretch, a bend, a rotation about the up axis), noised, and sometimes partially
occluded (the points beyond a random plane removed, as a scanner misses a side). The same seed
writes the same files: `root/{train,test}/CLASS/NNNNN.npy`, (points, 3) float32 each.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

Rng = np.random.Generator


def _sphere(n: int, rng: Rng) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _ellipsoid(n: int, rng: Rng) -> np.ndarray:
    return _sphere(n, rng) * np.array([1.0, 0.55, 0.3])


def _torus(n: int, rng: Rng) -> np.ndarray:
    u, v = 2 * np.pi * rng.random((2, n))
    r = 1.0 + 0.3 * np.cos(v)
    return np.stack([r * np.cos(u), r * np.sin(u), 0.3 * np.sin(v)], axis=1)


def _cube(n: int, rng: Rng) -> np.ndarray:
    p = rng.uniform(-1, 1, size=(n, 3))
    axis = rng.integers(0, 3, size=n)
    p[np.arange(n), axis] = rng.choice([-1.0, 1.0], size=n)
    return p


def _cylinder(n: int, rng: Rng) -> np.ndarray:
    u = 2 * np.pi * rng.random(n)
    z = rng.uniform(-1, 1, n)
    p = np.stack([0.5 * np.cos(u), 0.5 * np.sin(u), z], axis=1)
    cap = rng.random(n) < 0.2  # the two lids: a fifth of the points
    r = 0.5 * np.sqrt(rng.random(n))
    p[cap] = np.stack([r * np.cos(u), r * np.sin(u), rng.choice([-1.0, 1.0], n)], axis=1)[cap]
    return p


def _cone(n: int, rng: Rng) -> np.ndarray:
    u = 2 * np.pi * rng.random(n)
    h = np.sqrt(rng.random(n))  # uniform on the lateral surface
    p = np.stack([0.7 * h * np.cos(u), 0.7 * h * np.sin(u), 1 - 2 * h], axis=1)
    base = rng.random(n) < 0.25
    r = 0.7 * np.sqrt(rng.random(n))
    p[base] = np.stack([r * np.cos(u), r * np.sin(u), -np.ones(n)], axis=1)[base]
    return p


def _tube(curve: np.ndarray, radius: float, rng: Rng) -> np.ndarray:
    """Points near a curve (n, 3): a thin tube around it."""
    return curve + radius * _sphere(len(curve), rng)


def _helix(n: int, rng: Rng) -> np.ndarray:
    t = rng.uniform(0, 6 * np.pi, n)
    curve = np.stack([0.6 * np.cos(t), 0.6 * np.sin(t), t / (3 * np.pi) - 1], axis=1)
    return _tube(curve, 0.08, rng)


def _trefoil(n: int, rng: Rng) -> np.ndarray:
    t = rng.uniform(0, 2 * np.pi, n)
    curve = np.stack(
        [np.sin(t) + 2 * np.sin(2 * t), np.cos(t) - 2 * np.cos(2 * t), -np.sin(3 * t)], axis=1
    )
    return _tube(curve / 3, 0.06, rng)


def _pyramid(n: int, rng: Rng) -> np.ndarray:
    apex = np.array([0.0, 0.0, 1.0])
    corners = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1]], dtype=float)
    faces = [(apex, corners[i], corners[(i + 1) % 4]) for i in range(4)]
    faces += [(corners[0], corners[1], corners[2]), (corners[0], corners[2], corners[3])]
    tri = np.array(faces)
    pick = rng.integers(0, len(tri), n)
    u, v = rng.random((2, n, 1))
    flip = (u + v) > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    a, b, c = tri[pick, 0], tri[pick, 1], tri[pick, 2]
    return a + u * (b - a) + v * (c - a)


def _annulus(n: int, rng: Rng) -> np.ndarray:
    u = 2 * np.pi * rng.random(n)
    r = np.sqrt(rng.uniform(0.4**2, 1.0, n))
    return np.stack([r * np.cos(u), r * np.sin(u), rng.normal(0, 0.02, n)], axis=1)


def _dumbbell(n: int, rng: Rng) -> np.ndarray:
    p = 0.45 * _sphere(n, rng)
    p[:, 2] += rng.choice([-0.6, 0.6], n)
    bar = rng.random(n) < 0.15
    p[bar] = _tube(np.stack([np.zeros(n), np.zeros(n), rng.uniform(-0.6, 0.6, n)], 1), 0.1, rng)[
        bar
    ]
    return p


def _saddle(n: int, rng: Rng) -> np.ndarray:
    x, y = rng.uniform(-1, 1, (2, n))
    return np.stack([x, y, 0.6 * (x**2 - y**2)], axis=1)


SHAPES: dict[str, Callable[[int, Rng], np.ndarray]] = {
    "sphere": _sphere,
    "ellipsoid": _ellipsoid,
    "torus": _torus,
    "cube": _cube,
    "cylinder": _cylinder,
    "cone": _cone,
    "helix": _helix,
    "trefoil": _trefoil,
    "pyramid": _pyramid,
    "annulus": _annulus,
    "dumbbell": _dumbbell,
    "saddle": _saddle,
}


def deform(points: np.ndarray, rng: Rng, noise: float, occlusion: float) -> np.ndarray:
    """Stretch, bend, turn about z, add noise; with probability `occlusion` cut one side."""
    p = points * rng.uniform(0.8, 1.2, size=3)
    p[:, 0] += rng.uniform(-0.15, 0.15) * p[:, 2] ** 2  # a gentle bend
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    p = p @ rot.T + rng.normal(0, noise, size=p.shape)
    if rng.random() < occlusion:
        d = _sphere(1, rng)[0]
        proj = p @ d
        p = p[proj < np.quantile(proj, rng.uniform(0.75, 0.9))]  # 10-25% of the cloud gone
    return p


def make_shape_cloud(
    name: str, points: int, rng: Rng, noise: float = 0.01, occlusion: float = 0.3
) -> np.ndarray:
    """One deformed, noisy cloud of shape `name`, exactly `points` points, float32."""
    p = deform(SHAPES[name](2 * points, rng), rng, noise, occlusion)
    return p[rng.choice(len(p), size=points, replace=len(p) < points)].astype(np.float32)


def make_shapes(
    root: str | Path,
    train: int = 40,
    test: int = 20,
    points: int = 1024,
    seed: int = 0,
) -> Path:
    """Write `train` and `test` clouds per class under root/{train,test}/CLASS/; return root."""
    root = Path(root)
    for split, count, offset in (("train", train, 0), ("test", test, 1)):
        for c, name in enumerate(SHAPES):
            rng = np.random.default_rng([seed, offset, c])
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                np.save(folder / f"{i:05d}.npy", make_shape_cloud(name, points, rng))
    return root
