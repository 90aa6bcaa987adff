"""Reconstruction figures: rows of original | masked input | reconstruction | visible+reconstruction.

Images whose values are in [0, 1] once un-normalised (uint8 pictures) are shown as they are.
Other data (multi-band tiles, spectrograms: float values in their own units) is scaled for display
band by band: each band's 1st..99th percentile over the originals of the figure maps to black..white,
and every column uses the originals' scaling, so reconstructions are comparable with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mimkit.data.transforms import fit_to_model, normalize
from mimkit.masking import Mask
from mimkit.objectives.base import MaskedMethod
from mimkit.patches import unpatchify

COLUMNS = ("original", "masked", "reconstruction", "pasted")  # `masked` onwards: reconstruct's keys


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> HWC uint8 with 1 or 3 channels (extra channels: the first three)."""
    arr = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return arr[:, :, :3] if arr.shape[2] >= 3 else np.repeat(arr[:, :, :1], 3, axis=2)


def _panels(
    x: torch.Tensor, out: dict[str, torch.Tensor], mean: list[float], std: list[float]
) -> list[torch.Tensor]:
    """The `COLUMNS` of one figure, in [0, 1] for display: the input, then reconstruct's outputs."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(shape)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(shape)
    raw = [p.float() * s + m for p in (x, *(out[name] for name in COLUMNS[1:]))]
    return display_scale(raw)


def display_scale(panels: list[torch.Tensor], eps: float = 1e-3) -> list[torch.Tensor]:
    """Panels (N, C, ...) un-normalised -> [0, 1]: as they are when the originals (`panels[0]`)
    lie in [0, 1]; else per band, the originals' 1st..99th percentile stretched to 0..1."""
    original = panels[0]
    if original.min() >= -eps and original.max() <= 1 + eps:
        return [p.clamp(0, 1) for p in panels]
    bands = original.transpose(0, 1).reshape(original.shape[1], -1)
    step = max(1, bands.shape[1] // 100_000)  # quantile needs no more than a sample
    sample = bands[:, ::step]
    low = torch.quantile(sample, 0.01, dim=1)
    high = torch.quantile(sample, 0.99, dim=1)
    span = torch.where(high > low, high - low, torch.ones_like(high))
    shape = (1, -1) + (1,) * (original.ndim - 2)
    low, span = low.view(shape), span.view(shape)
    return [((p - low) / span).clamp(0, 1) for p in panels]


@torch.no_grad()
def reconstruction_grid(
    model: MaskedMethod,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    seed: int = 0,
    scale: int = 4,
    gap: int = 2,
) -> Image.Image:
    """A PIL image with one row per input and the four `COLUMNS`, upscaled by `scale`."""
    if images.ndim == 5:
        return clip_reconstruction_grid(model, images, mean, std, seed, scale, gap)
    model.eval()
    device = next(model.parameters()).device
    x = normalize(images.to(device), mean, std)
    generator = torch.Generator(device).manual_seed(seed)
    mask = model.draw_mask(len(x), device, generator)
    panels = _panels(x, model.reconstruct(x, mask), mean, std)
    if isinstance(mask, Mask):  # (MFM hides frequencies: its masked panel is the filtered image)
        # grey out hidden patches in the masked panel so they read as "missing", not "black"
        cfg = model.cfg
        per_patch = mask.binary[..., None].expand(-1, -1, cfg.patch_size**2 * cfg.in_chans)
        hidden = unpatchify(per_patch, cfg.patch_size, cfg.grid_hw, cfg.in_chans) > 0.5
        panels[1] = torch.where(hidden, torch.full_like(panels[1], 0.5), panels[1])
    n, _, h, w = x.shape
    sh, sw = h * scale, w * scale
    canvas = np.full((n * (sh + gap) + gap, len(panels) * (sw + gap) + gap, 3), 255, dtype=np.uint8)
    for row in range(n):
        for col, panel in enumerate(panels):
            tile = to_uint8_hwc(panel[row]).repeat(scale, axis=0).repeat(scale, axis=1)
            top, left = gap + row * (sh + gap), gap + col * (sw + gap)
            canvas[top : top + sh, left : left + sw] = tile
    return Image.fromarray(canvas)


@torch.no_grad()
def clip_reconstruction_grid(
    model: MaskedMethod,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    seed: int = 0,
    scale: int = 2,
    gap: int = 2,
) -> Image.Image:
    """Clips or volumes (N, C, T, H, W): per item, four rows (`COLUMNS`) of T frames/slices."""
    model.eval()
    device = next(model.parameters()).device
    x = fit_to_model(normalize(images.to(device), mean, std), model.cfg.input_size)
    mask = model.draw_mask(len(x), device, torch.Generator(device).manual_seed(seed))
    panels = _panels(x, model.reconstruct(x, mask), mean, std)
    hidden_patches = mask.binary[..., None].expand(-1, -1, model.cfg.patch_dim)
    hidden = model.unpatchify(hidden_patches) > 0.5
    panels[1] = torch.where(hidden, torch.full_like(panels[1], 0.5), panels[1])
    n, _, t, h, w = x.shape
    sh, sw = h * scale, w * scale
    rows = n * len(panels)
    canvas = np.full((rows * (sh + gap) + gap * (n + 1), t * (sw + gap) + gap, 3), 255, np.uint8)
    for item in range(n):
        for k, panel in enumerate(panels):
            top = gap * (item + 1) + (item * len(panels) + k) * (sh + gap)
            for f in range(t):
                tile = to_uint8_hwc(panel[item, :, f]).repeat(scale, 0).repeat(scale, 1)
                left = gap + f * (sw + gap)
                canvas[top : top + sh, left : left + sw] = tile
    return Image.fromarray(canvas)


def save_reconstructions(
    model: MaskedMethod,
    images: torch.Tensor,
    mean: list[float],
    std: list[float],
    path: str | Path,
    seed: int = 0,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reconstruction_grid(model, images, mean, std, seed).save(path)
    return path


def training_picture(
    model: MaskedMethod, images: torch.Tensor, mean: list[float], std: list[float], seed: int = 0
) -> Image.Image | None:
    """The reconstruction figure drawn during training (`pretrain(picture=...)`); None for
    methods whose target is not pixels (HOG, teacher features)."""
    if not getattr(model, "reconstructs_pixels", False):
        return None
    return reconstruction_grid(model, images, mean, std, seed)
