"""Reconstruction figures of data that is not uint8 pictures (multi-band tiles) are visible."""

import numpy as np
import torch
from conftest import tiny_method_parts

from mimkit.inspect.reconstructions import display_scale, reconstruction_grid
from mimkit.objectives.mae import build_mae


def _original_tiles(figure, n, size=16, scale=4, gap=2):
    arr = np.asarray(figure)
    return [
        arr[gap + r * (size * scale + gap) :][: size * scale, gap : gap + size * scale]
        for r in range(n)
    ]


def test_multiband_reconstructions_are_scaled_per_band_not_white():
    model_cfg, masking, settings = tiny_method_parts(in_chans=6)
    torch.manual_seed(0)
    model = build_mae(model_cfg, masking, settings).eval()
    g = torch.Generator().manual_seed(0)
    # uint16-like reflectances: band b around 1000 * (b + 1), as `data synth tiles` writes them
    levels = torch.arange(1, 7, dtype=torch.float32).view(1, 6, 1, 1) * 1000
    tiles = levels + 300 * torch.rand(3, 6, 16, 16, generator=g)
    mean = [1000 * (b + 1) / 255 for b in range(6)]  # per-band stats in normalize's units
    std = [300 / 255] * 6
    figure = reconstruction_grid(model, tiles, mean, std)
    for tile in _original_tiles(figure, 3):
        assert tile.std() > 20 and (tile < 250).mean() > 0.5  # a picture, not solid white


def test_pictures_in_0_1_are_shown_unchanged():
    x = torch.rand(2, 3, 4, 4)
    out = display_scale([x, x * 2])
    assert torch.equal(out[0], x) and torch.equal(out[1], (x * 2).clamp(0, 1))


def test_every_column_uses_the_originals_scaling():
    original = torch.linspace(0, 1000, 200).view(1, 2, 10, 10)
    out = display_scale([original, original / 2])
    bands = original.transpose(0, 1).reshape(2, -1)
    low = bands.quantile(0.01, dim=1).view(1, 2, 1, 1)
    high = bands.quantile(0.99, dim=1).view(1, 2, 1, 1)
    torch.testing.assert_close(out[0], ((original - low) / (high - low)).clamp(0, 1))
    torch.testing.assert_close(out[1], ((original / 2 - low) / (high - low)).clamp(0, 1))
    assert out[1].max() < 0.6  # half the values look darker, not re-stretched to white
