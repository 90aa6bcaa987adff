import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mimkit.masking import STRATEGIES, colored_noise, num_kept
from mimkit.objectives.crossmae import partial_reconstruction


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def hidden_grid(mask, grid):
    return mask.binary.view(-1, *grid).bool()


def neighbour_agreement(hidden: torch.Tensor) -> float:
    """Fraction of horizontally/vertically adjacent patch pairs that share a state."""
    same_h = (hidden[:, :, 1:] == hidden[:, :, :-1]).float().mean()
    same_v = (hidden[:, 1:] == hidden[:, :-1]).float().mean()
    return float((same_h + same_v) / 2)


FREE_GRID = [name for name in STRATEGIES if name != "coarse"]


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(FREE_GRID),
    h=st.integers(2, 14),
    w=st.integers(2, 14),
    ratio=st.floats(0.1, 0.95),
    batch=st.integers(1, 3),
)
def test_every_strategy_hides_exactly_the_mae_count(name, h, w, ratio, batch):
    mask = STRATEGIES[name](batch, (h, w), ratio, generator=gen())
    n = h * w
    assert mask.ids_keep.shape == (batch, num_kept(n, ratio))
    both = torch.cat([mask.ids_keep, mask.ids_masked], 1).sort(1).values
    assert torch.equal(both, torch.arange(n).expand(batch, n))


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_seeded_and_per_sample(name):
    a = STRATEGIES[name](6, (8, 8), 0.75, generator=gen(1))
    b = STRATEGIES[name](6, (8, 8), 0.75, generator=gen(1))
    c = STRATEGIES[name](6, (8, 8), 0.75, generator=gen(2))
    assert torch.equal(a.ids_restore, b.ids_restore)
    assert not torch.equal(a.binary, c.binary)
    assert len({tuple(row.tolist()) for row in a.binary}) > 1


def test_block_and_gmml_masks_are_clumpier_than_random():
    random = neighbour_agreement(
        hidden_grid(STRATEGIES["random"](64, (14, 14), 0.5, generator=gen()), (14, 14))
    )
    for name in ("block", "gmml", "colormae_red"):
        clumpy = neighbour_agreement(
            hidden_grid(STRATEGIES[name](64, (14, 14), 0.5, generator=gen()), (14, 14))
        )
        assert clumpy > random + 0.1, name


def test_coarse_masking_hides_whole_mask_patches():
    mask = STRATEGIES["coarse"](4, (8, 8), 0.75, generator=gen(), mask_patch=2)
    hidden = hidden_grid(mask, (8, 8)).float()
    groups = hidden.view(4, 4, 2, 4, 2).sum(dim=(2, 4))  # hidden patches per 2x2 group
    assert set(groups.unique().tolist()) <= {0.0, 4.0}
    assert mask.ids_keep.shape[1] == 16
    with pytest.raises(ValueError, match="not divisible by the mask patch"):
        STRATEGIES["coarse"](1, (7, 7), 0.75, mask_patch=2)


def test_grid_masking_keeps_one_patch_per_cell_at_three_quarters():
    mask = STRATEGIES["grid"](5, (8, 8), 0.75, generator=gen())
    kept = (~hidden_grid(mask, (8, 8))).float()
    per_cell = kept.view(5, 4, 2, 4, 2).sum(dim=(2, 4))
    assert torch.all(per_cell == 1)


def test_colormae_noise_colours_have_their_spectra():
    def smoothness(color):
        noise = colored_noise(32, (16, 16), color, generator=gen())
        return float(
            torch.corrcoef(torch.stack([noise[:, :, 1:].flatten(), noise[:, :, :-1].flatten()]))[
                0, 1
            ]
        )

    red, blue, green, purple = (smoothness(c) for c in ("red", "blue", "green", "purple"))
    assert red > 0.5  # low-pass: neighbours agree
    assert blue < 0  # high-pass: neighbours disagree
    assert red > green > blue
    assert purple > blue


def test_colormae_masks_do_not_depend_on_data():
    # the strategy takes no image: the same seed gives the same masks for any batch content
    a = STRATEGIES["colormae_green"](3, (8, 8), 0.75, generator=gen(5))
    b = STRATEGIES["colormae_green"](3, (8, 8), 0.75, generator=gen(5))
    assert torch.equal(a.ids_keep, b.ids_keep)
    assert a.ids_keep.shape[1] == 16


def test_partial_reconstruction_picks_a_subset_of_hidden_patches():
    mask = STRATEGIES["random"](4, (8, 8), 0.75, generator=gen())
    chosen = partial_reconstruction(mask, 0.25, generator=gen(1))
    assert chosen.shape == (4, 16)  # a quarter of all 64 patches (the reference), not of 48 hidden
    for row, hidden in zip(chosen, mask.ids_masked, strict=True):
        assert set(row.tolist()) <= set(hidden.tolist())
        assert len(set(row.tolist())) == 16
    assert partial_reconstruction(mask, 1.0, generator=gen(1)).shape == (4, 48)  # at most hidden


def test_mask_gallery_command_writes_one_tile_per_strategy(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from mimkit.cli import main

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(
        tmp_path / "x.png"
    )
    out = tmp_path / "gallery.png"
    assert (
        main(
            [
                "inspect",
                "masks",
                "--image",
                str(tmp_path / "x.png"),
                "--grid",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    sheet = Image.open(out)
    tile = 8 * 20  # grid * patch pixels
    assert sheet.size == (5 * (tile + 4) + 4, 2 * (tile + 14 + 4) + 4)
    assert "mask gallery:" in capsys.readouterr().out
    assert main(["inspect", "masks", "--image", str(tmp_path / "missing.png")]) == 2


def test_multiblock_keeps_context_outside_the_targets_first():
    from mimkit.masking import multiblock_regions

    target, context = multiblock_regions(16, (14, 14), generator=gen(3))
    free = context & ~target
    assert target.any(1).all() and (context.sum(1) >= 0.8 * 196).all()
    ratio = 1 - int(free.sum(1).min()) / 196  # keep no more than the smallest free region
    mask = STRATEGIES["multiblock"](16, (14, 14), ratio, generator=gen(3))
    kept = ~mask.binary.bool()
    assert torch.all(kept <= free)  # every kept patch is context and outside all targets
    assert torch.all(mask.binary.bool() >= target)  # every target patch is hidden
