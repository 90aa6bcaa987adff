"""MaskFeat's HOG target (objectives/hog.py) against hand computations and the reference's
conventions (SlowFast HOGLayerC / mmpretrain HOGGenerator)."""

import math

import pytest
import torch
from conftest import tiny_model_overrides

from mimkit.config import load_config
from mimkit.errors import ConfigError
from mimkit.objectives.hog import PatchHOG, default_cell, gaussian_window
from mimkit.train.checkpoint import method_from_config

HORIZONTAL_GRADIENT_BIN = 4  # of 9, orientations measured from the vertical axis (atan2(gx, gy))


def test_a_vertical_edge_puts_all_mass_in_the_horizontal_gradient_bin_of_the_cells_it_crosses():
    hog = PatchHOG(patch_size=8, channels=1, bins=9, cell=4)  # 2x2 cells of 4 px per patch
    image = torch.zeros(1, 1, 8, 16)
    image[..., 8:] = 1.0  # the edge between columns 7 and 8: the patches' common border
    feats = hog(image).view(1, 2, 1, 9, 2, 2)  # (B, patch, channel, bin, cell row, cell column)
    expected = torch.zeros(1, 2, 1, 9, 2, 2)
    expected[0, 0, 0, HORIZONTAL_GRADIENT_BIN, :, 1] = 1.0  # patch 0: its right-hand cells
    expected[0, 1, 0, HORIZONTAL_GRADIENT_BIN, :, 0] = 1.0  # patch 1: its left-hand cells
    torch.testing.assert_close(feats, expected)  # cells without gradient stay zero
    rotated = hog(image.transpose(-1, -2).contiguous()).view(1, 2, 1, 9, 2, 2)  # horizontal edge
    assert torch.equal(rotated[0, 0, 0, 0, 1], torch.ones(2)) and rotated[:, :, :, 1:].sum() == 0


def reflect(i: int, n: int) -> int:
    return -i if i < 0 else 2 * (n - 1) - i if i >= n else i


def hog_by_hand(image: torch.Tensor, patch: int, cell: int, bins: int) -> torch.Tensor:
    """The reference's HOG of one image (C, H, W), pixel by pixel in float64."""
    c_, h, w = image.shape
    x = image.double().tolist()
    side = [1.0, 2.0, 1.0]
    n = [(i - (patch - 1) / 2) / (patch // 2) for i in range(patch)]
    g = [math.exp(-0.5 * v * v) for v in n]
    total = sum(g) ** 2
    hist = torch.zeros(c_, bins, h // cell, w // cell, dtype=torch.float64)
    for c in range(c_):
        for r in range(h):
            for q in range(w):

                def at(rr, qq, c=c):
                    return x[c][reflect(rr, h)][reflect(qq, w)]

                gx = sum(side[k] * (at(r + k - 1, q - 1) - at(r + k - 1, q + 1)) for k in range(3))
                gy = sum(side[k] * (at(r - 1, q + k - 1) - at(r + 1, q + k - 1)) for k in range(3))
                weight = g[r % patch] * g[q % patch] / total
                b = math.floor(math.atan2(gx, gy) / math.pi * bins) % bins
                hist[c, b, r // cell, q // cell] += math.hypot(gx, gy) * weight
    hist = hist / hist.norm(dim=1, keepdim=True).clamp(min=1e-12)  # per cell and channel
    k = patch // cell
    rows = []
    for pr in range(h // patch):
        for pc in range(w // patch):
            cells = hist[:, :, pr * k : pr * k + k, pc * k : pc * k + k]  # (C, bins, k, k)
            rows.append(cells.reshape(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("patch, cell", [(4, 2), (7, 7)])
def test_hog_matches_the_reference_computed_pixel_by_pixel(patch, cell):
    image = torch.rand(2, 2 * patch, 3 * patch, generator=torch.Generator().manual_seed(patch))
    hog = PatchHOG(patch_size=patch, channels=2, bins=9, cell=cell)
    got = hog(image[None])[0]
    assert got.shape == (6, 2 * 9 * (patch // cell) ** 2) == (6, hog.dim)
    torch.testing.assert_close(got, hog_by_hand(image, patch, cell, 9).float(), atol=1e-5, rtol=0)
    per_cell = got.view(6, 2, 9, -1).norm(dim=2)  # each cell's histogram has unit length
    torch.testing.assert_close(per_cell, torch.ones_like(per_cell))


def test_gaussian_window_weighs_the_patch_centre_most():
    window = gaussian_window(7)
    assert window.sum().item() == pytest.approx(1.0) and window.argmax() == 3 * 7 + 3
    one = torch.exp(-0.5 * ((torch.arange(7.0) - 3) / 3) ** 2)  # sigma = 7 // 2
    torch.testing.assert_close(window, torch.outer(one, one) / torch.outer(one, one).sum())


def test_cell_size_follows_the_reference_where_it_fits_the_patch():
    assert [default_cell(p) for p in (16, 8, 7, 14, 4, 12)] == [8, 8, 7, 7, 4, 6]
    overrides = tiny_model_overrides("runs/unused")
    cfg = load_config("configs/fmnist_maskfeat_tiny.yaml", overrides)
    model = method_from_config(cfg)
    assert model.hog.cell == 7 and model.hog.dim == 9  # 7-px patches: one 7-px cell per patch
    cells = load_config("configs/fmnist_maskfeat_tiny.yaml", [*overrides, "model.patch_size=14"])
    assert method_from_config(cells).hog.dim == 4 * 9  # 14-px patches: 2x2 cells of 7 px
    with pytest.raises(ConfigError, match="hog_cell 3 must divide model.patch_size 7"):
        load_config("configs/fmnist_maskfeat_tiny.yaml", [*overrides, "method.hog_cell=3"])
