"""Point clouds: readers, unit-sphere normalisation, fixed-size sampling, device augmentation.

Layout as for images: `root/{train,test}/CLASS/*.ext`, labels by sorted class folder. Formats:

- `.npy`: an (N, 3+) array; `.npz`: arrays `points` (or `xyz`/`pos`, else the first array),
  optional `normals` (N, 3) and per-point `labels` (N,);
- `.ply`: ASCII or binary (little/big endian) with a `vertex` element (x, y, z, optional
  nx, ny, nz and label/class properties) first;
- `.off`: vertices and faces; with faces the cloud is sampled on the surface (area-weighted);
- `.xyz` / `.txt` / `.pts`: one point per line, whitespace- or comma-separated.

Columns beyond xyz: 3-5 are normals, a 7th is a per-point label. A `Cloud` keeps all three; the
training data uses xyz (normals and labels are there for readers of the API). A file that
cannot be read is skipped with one warning line naming it, and counted.
"""

from __future__ import annotations

import logging
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mimkit.data.config import DataConfig
from mimkit.data.folder import list_images, split_folder
from mimkit.errors import DataError

log = logging.getLogger(__name__)
POINT_EXTENSIONS = frozenset({".npy", ".npz", ".ply", ".off", ".xyz", ".txt", ".pts"})
PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


@dataclass
class Cloud:
    """One point cloud as read: xyz (N, 3), optional normals (N, 3), per-point labels (N,)."""

    xyz: np.ndarray
    normals: np.ndarray | None = None
    labels: np.ndarray | None = None


def cloud_from_columns(data: np.ndarray, where: Path) -> Cloud:
    """(N, 3|6|7) columns -> Cloud: xyz, then normals, then a label."""
    if data.ndim != 2 or data.shape[1] < 3 or len(data) == 0:
        raise DataError(f"{where}: expected an (N, 3+) array of points, got shape {data.shape}")
    data = data.astype(np.float32)
    normals = data[:, 3:6] if data.shape[1] >= 6 else None
    labels = data[:, 6].astype(np.int64) if data.shape[1] >= 7 else None
    return Cloud(data[:, :3], normals, labels)


def _read_npz(path: Path) -> Cloud:
    with np.load(path, allow_pickle=False) as arrays:
        names = list(arrays.keys())
        key = next(
            (k for k in ("points", "xyz", "pos") if k in arrays), names[0] if names else None
        )
        if key is None:
            raise DataError(f"{path}: the .npz holds no arrays")
        cloud = cloud_from_columns(arrays[key], path)
        if "normals" in arrays:
            cloud.normals = arrays["normals"].astype(np.float32).reshape(-1, 3)
        if "labels" in arrays:
            cloud.labels = arrays["labels"].astype(np.int64).reshape(-1)
    return cloud


def _ply_header(raw: bytes, path: Path) -> tuple[str, list[tuple[str, int, list]], int]:
    """(format, [(element, count, [(property, type)])], byte offset of the body)."""
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise DataError(f"{path}: not a PLY file (expected 'ply' ... 'end_header')")
    body = raw.index(b"\n", end) + 1
    fmt, elements = None, []
    for line in raw[:end].decode("ascii", "replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            elements[-1][2].append((words[-1], words[1:-1]))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise DataError(f"{path}: unknown PLY format {fmt!r}")
    return fmt, elements, body


def _read_ply(path: Path) -> Cloud:
    raw = path.read_bytes()
    fmt, elements, body = _ply_header(raw, path)
    if not elements or elements[0][0] != "vertex":
        raise DataError(f"{path}: expected the PLY 'vertex' element first")
    _, count, props = elements[0]
    if any(t[0] == "list" or t[0] not in PLY_TYPES for _, t in props):
        raise DataError(f"{path}: vertex properties must be scalars of PLY types")
    names = [name for name, _ in props]
    if fmt == "ascii":
        lines = raw[body:].decode("ascii", "replace").split("\n")[:count]
        table = np.array([line.split()[: len(names)] for line in lines], dtype=np.float64)
        if table.shape != (count, len(names)):
            raise DataError(f"{path}: expected {count} vertex lines of {len(names)} values")
        columns = {n: table[:, i] for i, n in enumerate(names)}
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(n, order + PLY_TYPES[t[0]]) for n, t in props])
        if len(raw) - body < dtype.itemsize * count:
            raise DataError(f"{path}: PLY body is shorter than {count} vertices")
        table = np.frombuffer(raw, dtype=dtype, count=count, offset=body)
        columns = {n: table[n].astype(np.float64) for n in names}
    if not {"x", "y", "z"} <= set(columns):
        raise DataError(f"{path}: the PLY vertex element lacks x, y or z")
    xyz = np.stack([columns[a] for a in "xyz"], axis=1).astype(np.float32)
    normals = None
    if {"nx", "ny", "nz"} <= set(columns):
        normals = np.stack([columns[a] for a in ("nx", "ny", "nz")], axis=1).astype(np.float32)
    label = next((columns[k] for k in ("label", "class") if k in columns), None)
    return Cloud(xyz, normals, None if label is None else label.astype(np.int64))


def _read_off(path: Path, points: int, rng: np.random.Generator) -> Cloud:
    words = path.read_text().split()
    if not words or not words[0].startswith("OFF"):
        raise DataError(f"{path}: not an OFF file (expected 'OFF' first)")
    head = re.sub(r"^C?N?OFF", "", words[0])  # ModelNet writes 'OFF490 518 0' on one line
    words = ([head] if head else []) + words[1:]
    try:
        nv, nf = int(words[0]), int(words[1])
        vertices = np.array(words[3 : 3 + 3 * nv], dtype=np.float64).reshape(nv, 3)
        faces, at = [], 3 + 3 * nv
        for _ in range(nf):
            k = int(words[at])
            faces.append([int(w) for w in words[at + 1 : at + 1 + k]])
            at += 1 + k
    except (IndexError, ValueError) as e:
        raise DataError(f"{path}: malformed OFF counts, vertices or faces ({e})") from None
    triangles = [(f[0], f[i], f[i + 1]) for f in faces for i in range(1, len(f) - 1)]
    if not triangles:
        return cloud_from_columns(vertices, path)
    tri = vertices[np.array(triangles)]  # (T, 3, 3)
    if tri.size == 0 or (np.array(triangles) >= nv).any():
        raise DataError(f"{path}: OFF faces index past the {nv} vertices")
    return Cloud(sample_surface(tri, points, rng).astype(np.float32))


def sample_surface(triangles: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` points uniform on the surface of triangles (T, 3, 3), weighted by area."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    if area.sum() <= 0:
        return triangles.reshape(-1, 3)
    pick = rng.choice(len(area), size=count, p=area / area.sum())
    u, v = rng.random((2, count, 1))
    flip = (u + v) > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    return a[pick] + u * (b[pick] - a[pick]) + v * (c[pick] - a[pick])


def read_cloud(path: str | Path, points: int = 2048, seed: int = 0) -> Cloud:
    """Read one cloud; meshes (.off with faces) are sampled with `points` points."""
    path = Path(path)
    cloud = _read_any(path, points, seed)
    if not np.isfinite(cloud.xyz).all():
        raise DataError(f"{path}: the cloud holds non-finite coordinates")
    return cloud


def _read_any(path: Path, points: int, seed: int) -> Cloud:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return cloud_from_columns(np.load(path, allow_pickle=False), path)
        if suffix == ".npz":
            return _read_npz(path)
        if suffix == ".ply":
            return _read_ply(path)
        if suffix == ".off":
            return _read_off(path, points, np.random.default_rng(seed))
        if suffix in (".xyz", ".txt", ".pts"):
            text = path.read_text().replace(",", " ")
            return cloud_from_columns(np.loadtxt(text.splitlines(), ndmin=2), path)
    except (OSError, ValueError, UnicodeDecodeError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: unreadable point cloud ({type(e).__name__}: {e})") from None
    raise DataError(
        f"{path}: unknown point-cloud extension; expected one of {sorted(POINT_EXTENSIONS)}"
    )


def normalize_unit_sphere(xyz: np.ndarray) -> np.ndarray:
    """Centre on the centroid and scale so the farthest point is at distance 1."""
    centred = xyz - xyz.mean(axis=0)
    radius = float(np.sqrt((centred**2).sum(axis=1)).max())
    return centred / radius if radius > 0 else centred


def sample_fixed(xyz: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly `count` points: a random subset, or every point plus random repeats."""
    n = len(xyz)
    if n >= count:
        return xyz[rng.choice(n, size=count, replace=False)]
    return xyz[np.concatenate([np.arange(n), rng.choice(n, size=count - n, replace=True)])]


def prepare_cloud(cloud: Cloud, count: int, rng: np.random.Generator) -> np.ndarray:
    """A cloud as the model takes it: (count, 3) float32 in the unit sphere."""
    return normalize_unit_sphere(sample_fixed(cloud.xyz, count, rng)).astype(np.float32)


def load_point_folder(
    folder: str | Path, points: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(clouds (N, points, 3) float32, labels (N,), skipped) of a class-folder tree.

    Sampling is seeded per file (by `seed` and its position), so a split reads the same every
    time. Unreadable files are skipped, each with one warning line, and counted.
    """
    folder = Path(folder)
    files, labels, _ = list_images(folder, POINT_EXTENSIONS)
    clouds, kept, skipped = [], [], 0
    for i, (path, label) in enumerate(zip(files, labels, strict=True)):
        rng = np.random.default_rng([seed, i])
        try:
            clouds.append(prepare_cloud(read_cloud(path, 4 * points, seed + i), points, rng))
            kept.append(label)
        except DataError as e:
            skipped += 1
            log.warning("skipped %s", e)
    if skipped:
        log.warning("%s: skipped %d unreadable point cloud(s) of %d", folder, skipped, len(files))
    if not clouds:
        raise DataError(f"{folder}: no readable point clouds among {len(files)} files")
    return torch.from_numpy(np.stack(clouds)), torch.tensor(kept, dtype=torch.int64), skipped


def load_point_split(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split of a `points` data source: `path/train`, `path/test` (or `path` for train)."""
    check_point_settings(cfg)
    clouds, labels, _ = load_point_folder(split_folder(Path(cfg.path), split), cfg.points)
    return clouds, labels


def check_point_settings(cfg: DataConfig) -> None:
    """Refuse point-cloud data settings that cannot work, naming the field."""
    if not cfg.path:
        raise DataError("data.path: the points source needs a folder of point clouds")
    if cfg.points < 1:
        raise DataError(f"data.points must be >= 1, got {cfg.points}")
    scale = list(cfg.point_scale)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise DataError(f"data.point_scale must be [low, high] with 0 < low <= high, got {scale}")
    if cfg.point_translate < 0 or cfg.point_jitter < 0:
        raise DataError(
            "data.point_translate and data.point_jitter must be >= 0, got "
            f"{cfg.point_translate} and {cfg.point_jitter}"
        )


# ---- augmentation on the device ---------------------------------------------------------------


def augment_points(
    clouds: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.8, 1.25),
    translate: float = 0.1,
    rotate: bool = True,
    jitter: float = 0.01,
    rows: slice | torch.Tensor | None = None,
    global_batch: int | None = None,
) -> torch.Tensor:
    """Random per-axis scale, translation, rotation about the up (z) axis and clipped Gaussian
    jitter of (B, P, 3) clouds, on their device.

    Parameters are drawn for the whole global batch and cut to `rows`, as image crops are, so
    a sample is augmented the same whatever the number of processes; the jitter is drawn per
    local batch.
    """
    x, dev = clouds.float(), clouds.device
    n = global_batch or len(x)

    def draw(*shape: int) -> torch.Tensor:
        values = torch.rand(n, *shape, device=dev, generator=generator)
        return values if rows is None else values[rows]

    lo, hi = scale
    s = lo + (hi - lo) * draw(1, 3)
    t = translate * (2 * draw(1, 3) - 1)
    angle = 2 * math.pi * draw(1) if rotate else torch.zeros(len(x), 1, device=dev)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(cos), torch.ones_like(cos)
    rot = torch.stack(
        [
            torch.cat([cos, -sin, zero], 1),
            torch.cat([sin, cos, zero], 1),
            torch.cat([zero, zero, one], 1),
        ],
        dim=1,
    )  # (B, 3, 3) about z
    x = x @ rot.transpose(1, 2) * s + t
    if jitter > 0:
        noise = torch.randn(x.shape, device=dev, generator=generator) * jitter
        x = x + noise.clamp(-5 * jitter, 5 * jitter)
    return x


# ---- a hand-made descriptor: the raw-input baseline of point-cloud evaluations -----------------


def distance_histograms(clouds: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """(N, P, 3) unit-sphere clouds -> (N, 2 * bins) fixed-size descriptors: the histogram of
    each point's distance to the centroid (on [0, 1]) beside the histogram of all pairwise
    distances (Osada's D2 shape distribution, on [0, 2]), each summing to 1. Invariant to the
    order of the points and to rotation; nothing is learned."""
    centred = clouds.float() - clouds.float().mean(dim=1, keepdim=True)

    def hist(values: torch.Tensor, top: float) -> torch.Tensor:
        ids = (values / top * bins).long().clamp(0, bins - 1).flatten(1)
        counts = torch.zeros(len(values), bins).scatter_add_(
            1, ids, torch.ones_like(ids, dtype=torch.float)
        )
        return counts / counts.sum(dim=1, keepdim=True)

    radial = hist(centred.norm(dim=-1), 1.0)
    pairwise = torch.cat([hist(torch.cdist(c, c), 2.0) for c in centred.split(64)])
    return torch.cat([radial, pairwise], dim=1)
