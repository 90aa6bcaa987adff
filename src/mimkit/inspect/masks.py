"""A gallery of every masking strategy on one real image: what each method hides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from mimkit.data.idx import load_fashion_mnist
from mimkit.errors import DataError
from mimkit.masking import STRATEGIES


def load_gallery_image(path: str | None, size: int) -> torch.Tensor:
    """(3, size, size) float in [0, 1]: a file, or the first Fashion-MNIST test image."""
    if path:
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except OSError as exc:
            raise DataError(f"{path}: cannot read image ({exc})") from exc
        arr = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float() / 255
    else:
        arr = load_fashion_mnist("test")[0][0].float().repeat(3, 1, 1) / 255
    return F.interpolate(arr[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def mask_gallery(
    image: torch.Tensor, grid: int, ratio: float, seed: int = 0, names: list[str] | None = None
) -> Image.Image:
    """One tile per strategy: hidden patches greyed out, the strategy's name above."""
    names = names or [n for n in STRATEGIES if n != "tube"]  # tube: clips; on an image it is random
    size = image.shape[-1]
    patch = size // grid
    tiles = []
    for name in names:
        kwargs = {"mask_patch": 2} if name == "coarse" and grid % 2 == 0 else {}
        if name == "coarse" and not kwargs:
            continue
        gen = torch.Generator().manual_seed(seed)
        hidden = STRATEGIES[name](1, (grid, grid), ratio, generator=gen, **kwargs).binary.view(
            grid, grid
        )
        pixel_hidden = hidden.repeat_interleave(patch, 0).repeat_interleave(patch, 1).bool()
        tile = torch.where(pixel_hidden, torch.full_like(image, 0.5), image)
        arr = (tile.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        canvas = Image.new("RGB", (size, size + 14), "white")
        canvas.paste(Image.fromarray(arr), (0, 14))
        ImageDraw.Draw(canvas).text((2, 1), name, fill="black")
        tiles.append(canvas)
    cols = 5
    rows = (len(tiles) + cols - 1) // cols
    w, h = tiles[0].size
    sheet = Image.new("RGB", (cols * (w + 4) + 4, rows * (h + 4) + 4), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (4 + (i % cols) * (w + 4), 4 + (i // cols) * (h + 4)))
    return sheet


def save_mask_gallery(
    out: str | Path, image_path: str | None, grid: int, ratio: float, seed: int
) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image = load_gallery_image(image_path, grid * max(8, 160 // grid))
    mask_gallery(image, grid, ratio, seed).save(out)
    return out
