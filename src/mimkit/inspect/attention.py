"""Where the encoder looks: the last block's attention per head, and attention rollout.

The query is the cls token when the encoder has one. An encoder without one (`cls_token:
false`) has no single query that summarises the image, so its maps are the attention each
patch receives averaged over every patch query ("mean over patch queries"); the figure says
which. Rollout (Abnar and Zuidema, 2020) multiplies the head-averaged attention of every block,
each mixed half and half with the identity for the residual connection and renormalised, so it
shows what the last tokens draw from the input patches across the whole depth.

Images are drawn as they are: 2-D images one row each; clips and volumes one figure each, with
a column per frame or slice (at most `max_frames`, evenly spaced) and the map of the tubelet or
cube that frame belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mimkit.data.transforms import fit_to_model, normalize
from mimkit.errors import DataError
from mimkit.models.vit import VisionTransformer

CLS_QUERY = "cls token"
MEAN_QUERY = "mean over patch queries (no cls token)"


@dataclass
class AttentionMaps:
    """Attention over the patch grid, each map summing to 1 over patches."""

    heads: torch.Tensor  # (B, heads, *grid): the last block, one map per head
    rollout: torch.Tensor  # (B, *grid): across all blocks
    query: str  # which query the maps are of: CLS_QUERY or MEAN_QUERY
    depth: int


def rollout(maps: list[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """(B, N, N) attention rollout of per-block (B, heads, N, N) weights: the product over
    blocks of head-averaged attention mixed with the identity (`residual`), rows renormalised."""
    n = maps[0].shape[-1]
    eye = torch.eye(n, dtype=maps[0].dtype, device=maps[0].device)
    joint = eye.expand(maps[0].shape[0], n, n)
    for attn in maps:
        a = residual * eye + (1 - residual) * attn.mean(dim=1)
        joint = (a / a.sum(dim=-1, keepdim=True)) @ joint
    return joint


def _over_patches(weights: torch.Tensor, prefix: int) -> torch.Tensor:
    """Rows of `weights` (..., N_queries, N) -> (..., N_patches): the cls row when there is a
    prefix, else the mean over patch queries; renormalised over patches."""
    w = weights[..., 0, prefix:] if prefix else weights.mean(dim=-2)
    return w / w.sum(dim=-1, keepdim=True)


@torch.no_grad()
def attention_over_patches(
    encoder: VisionTransformer, x: torch.Tensor, residual: float = 0.5
) -> AttentionMaps:
    """Maps of a normalised batch `x` (B, C, *input_size), on the encoder's patch grid."""
    maps = encoder.attention_maps(x)
    p = encoder.num_prefix_tokens
    grid = encoder.cfg.grid_shape
    b, heads = maps[-1].shape[:2]
    last = _over_patches(maps[-1], p).reshape(b, heads, *grid)
    rolled = _over_patches(rollout(maps, residual), p).reshape(b, *grid)
    return AttentionMaps(last.cpu(), rolled.cpu(), CLS_QUERY if p else MEAN_QUERY, len(maps))


def load_image_files(paths: list[str], channels: int, size: tuple[int, int]) -> torch.Tensor:
    """(N, channels, H, W) uint8 from image files, converted and resized to the model's input."""
    if channels not in (1, 3):
        raise DataError(
            f"image files give 1 or 3 channels; this model takes {channels}: leave out the "
            "files to use the run's own test data"
        )
    out = []
    for path in paths:
        try:
            with Image.open(path) as image:
                im = image.convert("L" if channels == 1 else "RGB").resize(
                    (size[1], size[0]), Image.BILINEAR
                )
        except OSError as exc:
            raise DataError(f"{path}: cannot read image ({exc})") from exc
        arr = np.asarray(im).reshape(size[0], size[1], channels)
        out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    return torch.stack(out)


def _display(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, *spatial) -> float (N, *spatial, 3) in [0, 1]: grey, RGB, or channel 0."""
    x = images.float() / 255
    x = x[:, :3] if x.shape[1] == 3 else x[:, :1].expand(-1, 3, *x.shape[2:])
    return x.movedim(1, -1).numpy()


def _upsample(maps: torch.Tensor, size: tuple[int, ...]) -> np.ndarray:
    """(..., *grid) maps -> (..., *size), bilinear (trilinear for clips), each scaled to [0, 1]."""
    lead, grid = maps.shape[: -len(size)], maps.shape[-len(size) :]
    flat = maps.reshape(-1, 1, *grid).float()
    mode = "bilinear" if len(size) == 2 else "trilinear"
    up = F.interpolate(flat, size=size, mode=mode, align_corners=False)[:, 0]
    lo = up.flatten(1).min(dim=1).values.view(-1, *([1] * len(size)))
    hi = up.flatten(1).max(dim=1).values.view(-1, *([1] * len(size)))
    up = (up - lo) / (hi - lo).clamp_min(1e-12)
    return up.reshape(*lead, *size).numpy()


def _overlay(ax, image: np.ndarray, heat: np.ndarray | None, title: str | None) -> None:
    ax.imshow(image, interpolation="nearest")
    if heat is not None:
        ax.imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=1, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def pyplot():
    try:
        import matplotlib  # optional: mimkit[plot]

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt  # optional: mimkit[plot]
    except ImportError as exc:
        raise DataError("pictures need matplotlib: pip install 'mimkit[plot]'") from exc
    return plt


def save_figure(fig, out: Path, title: str | None = None, fontsize: int = 10) -> Path:
    """Title, lay out, write `out` at 100 dpi and free the figure."""
    if title:
        fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    pyplot().close(fig)
    return out


def image_figure(images: torch.Tensor, maps: AttentionMaps, out: Path, cell: float = 1.4) -> Path:
    """One row per 2-D image: the image, each head of the last block, then the rollout."""
    plt = pyplot()
    size = tuple(images.shape[-2:])
    shown = _display(images)
    heads = _upsample(maps.heads, size)
    rolled = _upsample(maps.rollout, size)
    n, h = heads.shape[:2]
    fig, axes = plt.subplots(n, h + 2, figsize=(cell * (h + 2), cell * n + 0.7), squeeze=False)
    for row in range(n):
        top = row == 0
        _overlay(axes[row, 0], shown[row], None, "image" if top else None)
        for k in range(h):
            _overlay(axes[row, k + 1], shown[row], heads[row, k], f"head {k + 1}" if top else None)
        _overlay(axes[row, h + 1], shown[row], rolled[row], "rollout" if top else None)
    title = (
        f"where the encoder looks: block {maps.depth} attention of the {maps.query}; "
        f"rollout over {maps.depth} blocks"
    )
    return save_figure(fig, out, title, fontsize=9)


def clip_figure(
    clip: torch.Tensor, maps: AttentionMaps, item: int, out: Path, max_frames: int = 8
) -> Path:
    """One clip or volume (C, T, H, W): a column per frame/slice; rows image, heads, rollout."""
    plt = pyplot()
    size = tuple(clip.shape[-3:])
    shown = _display(clip[None])[0]  # (T, H, W, 3)
    heads = _upsample(maps.heads[item], size)  # (heads, T, H, W)
    rolled = _upsample(maps.rollout[item], size)  # (T, H, W)
    t = size[0]
    frames = np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int))
    rows = [("frame", None), *((f"head {k + 1}", heads[k]) for k in range(len(heads)))]
    rows.append(("rollout", rolled))
    fig, axes = plt.subplots(
        len(rows),
        len(frames),
        figsize=(1.3 * len(frames) + 0.8, 1.3 * len(rows) + 0.6),
        squeeze=False,
    )
    for r, (label, heat) in enumerate(rows):
        for c, f in enumerate(frames):
            ax = axes[r, c]
            _overlay(ax, shown[f], None if heat is None else heat[f], f"t={f}" if r == 0 else None)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    title = f"item {item}: block {maps.depth} attention of the {maps.query}, per frame/slice"
    return save_figure(fig, out, title, fontsize=9)


def save_attention_figures(
    encoder: VisionTransformer,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    out_dir: str | Path,
    residual: float = 0.5,
) -> tuple[list[Path], AttentionMaps]:
    """Figures of uint8 `images` (N, C, H, W) or clips (N, C, T, H, W) under `out_dir`:
    `attention.png` for images, `attention_item<i>.png` per clip or volume."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(encoder.parameters()).device
    x = fit_to_model(normalize(images.to(device), mean, std), encoder.cfg.input_size)
    maps = attention_over_patches(encoder, x, residual)
    if x.ndim == 4:
        return [image_figure(images, maps, out_dir / "attention.png")], maps
    clips = fit_to_model(images, encoder.cfg.input_size)
    paths = [
        clip_figure(clips[i], maps, i, out_dir / f"attention_item{i}.png")
        for i in range(len(clips))
    ]
    return paths, maps
