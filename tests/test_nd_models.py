"""N-D patches, position tables, tube / running-cell masks and models for every input kind."""

import pytest
import torch
from conftest import method_parts
from hypothesis import given, settings
from hypothesis import strategies as st

from mimkit.config import load_config
from mimkit.errors import ConfigError
from mimkit.masking import mask_from_bool, tube_masking
from mimkit.masking import running_cell_targets as running_cell_keep
from mimkit.models.pos_embed import sincos_2d, sincos_grid, sincos_index
from mimkit.objectives.mae import build_mae, cube_channel_norm
from mimkit.patches import patchify, unpatchify


def tiny(**kw):
    cfg = dict(
        embed_dim=32,
        depth=1,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
    )
    cfg.update(kw)
    torch.manual_seed(0)
    return build_mae(*method_parts(**cfg))


@settings(max_examples=30, deadline=None)
@given(
    pt=st.integers(1, 3),
    p=st.integers(1, 4),
    grid=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    channels=st.integers(1, 3),
)
def test_3d_patchify_round_trip(pt, p, grid, channels):
    x = torch.randn(2, channels, grid[0] * pt, grid[1] * p, grid[2] * p)
    patches = patchify(x, (pt, p, p))
    assert patches.shape == (2, grid[0] * grid[1] * grid[2], pt * p * p * channels)
    assert torch.equal(unpatchify(patches, (pt, p, p), grid, channels), x)


def test_tubelet_layout_is_videomae_t_p_q_c():
    clips = torch.randn(1, 3, 4, 8, 8)  # (B, C, T, H, W)
    patches = patchify(clips, (2, 4, 4))
    # VideoMAE: view (B, T/t, t, C, H/p, p, W/p, p) -> permute(0, 1, 4, 6, 2, 5, 7, 3)
    frames = clips.transpose(1, 2).reshape(1, 2, 2, 3, 2, 4, 2, 4)
    ref = frames.permute(0, 1, 4, 6, 2, 5, 7, 3).reshape(1, 8, 2 * 4 * 4 * 3)
    assert torch.equal(patches, ref)


def test_grid_table_is_2d_table_for_2d_grids_and_distinct_in_3d():
    assert torch.equal(sincos_grid(64, (3, 5), cls_token=True), sincos_2d(64, 3, 5, True))
    table = sincos_grid(30, (2, 3, 4))  # 15 channel pairs shared 5/5/5, any even width works
    assert table.shape == (24, 30)
    assert torch.unique(table, dim=0).shape[0] == 24


def test_index_table_interleaves_sin_and_cos():
    table = sincos_index(8, 5)
    assert torch.allclose(table[:, 0], torch.sin(torch.arange(5.0)))
    assert torch.allclose(table[:, 1], torch.cos(torch.arange(5.0)))
    assert torch.allclose(table[3, 2], torch.sin(torch.tensor(3.0) / 10000 ** (2 / 8)))


def test_tube_mask_is_the_same_in_every_frame_at_the_exact_ratio():
    grid = (4, 6, 6)
    mask = tube_masking(3, grid, 0.9, generator=torch.Generator().manual_seed(0))
    hidden = mask.binary.reshape(3, 4, 36)
    assert torch.equal(hidden, hidden[:, :1].expand_as(hidden))
    assert (hidden[:, 0].sum(1) == 36 - int(36 * 0.1)).all()
    assert not torch.equal(hidden[0, 0], hidden[1, 0])  # per-sample masks differ
    again = tube_masking(3, grid, 0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.ids_keep, mask.ids_keep)


def test_running_cell_keeps_half_of_each_cell_and_runs_through_time():
    keep = running_cell_keep(4, (4, 4, 6), 0.5, generator=torch.Generator().manual_seed(0))
    cells = keep.reshape(4, 4, 2, 2, 3, 2).permute(0, 1, 2, 4, 3, 5).reshape(4, 4, 6, 4)
    assert (cells.sum(-1) == 2).all()  # two of four positions per cell, every frame
    assert (cells == cells[:, :, :1]).all()  # the same pattern in every cell of a frame
    assert not torch.equal(cells[:, 0], cells[:, 1])  # the pattern moves with time
    assert cells.any(dim=1).all()  # over the clip every position is predicted


def test_mask_from_bool_round_trip():
    hidden = torch.tensor([[True, False, True, False], [False, True, True, False]])
    mask = mask_from_bool(hidden)
    assert torch.equal(mask.binary.bool(), hidden)
    with pytest.raises(ValueError, match="same number"):
        mask_from_bool(torch.tensor([[True, False], [True, True]]))


@pytest.mark.parametrize(
    "kw, shape, grid",
    [
        (
            dict(img_size=[4, 16, 16], in_chans=1, patch_size=4, tubelet_size=2),
            (1, 4, 16, 16),
            (2, 4, 4),
        ),
        (dict(img_size=[8, 8, 8], in_chans=1, patch_size=4), (1, 8, 8, 8), (2, 2, 2)),  # cubes
        (dict(img_size=[32, 128], in_chans=1, patch_size=16), (1, 32, 128), (2, 8)),  # log-mel
        (dict(img_size=16, in_chans=6, patch_size=8), (6, 16, 16), (2, 2)),  # 6 bands
    ],
)
def test_every_input_kind_trains_and_reconstructs(kw, shape, grid):
    model = tiny(**kw)
    assert model.cfg.grid_shape == grid
    conv = type(model.encoder.patch_embed.proj).__name__
    assert conv == ("Conv3d" if len(grid) == 3 else "Conv2d")
    x = torch.randn(2, *shape)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == (2, model.cfg.num_patches, model.cfg.patch_dim)
    out.loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    rec = model.reconstruct(x, out.mask)
    assert rec["pasted"].shape == x.shape
    feats = model.encode(x)
    assert feats.shape == (2, 32)


def test_videomae_options_no_cls_token_and_channel_targets():
    model = tiny(
        img_size=[4, 16, 16],
        in_chans=2,
        patch_size=4,
        tubelet_size=2,
        cls_token=False,
        pool="avg",
        pos_embed="sincos_index",
        masking="tube",
        target_norm="channel",
    )
    assert model.encoder.pos_embed.shape == (1, 32, 32)
    assert not hasattr(model.encoder, "cls_token")
    x = torch.randn(2, 2, 4, 16, 16)
    target = model.target(x).reshape(2, 32, -1, 2)
    assert torch.allclose(target.mean(dim=2), torch.zeros(2, 32, 2), atol=1e-5)
    assert torch.allclose(target.std(dim=2), torch.ones(2, 32, 2), atol=1e-4)
    assert torch.equal(cube_channel_norm(model.patchify(x), 2), model.target(x))
    out = model(x)
    assert out.mask.ids_keep.shape[1] == 2 * int(16 * 0.25)


def test_decoder_masking_predicts_only_the_running_cell_positions():
    model = tiny(
        img_size=[4, 16, 16],
        in_chans=1,
        patch_size=4,
        tubelet_size=2,
        masking="tube",
        mask_ratio=0.75,
        decoder_mask_ratio=0.5,
    )
    model.train()
    out = model(torch.randn(2, 1, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == (2, 16, 32)  # half of the 32 tokens, 2x4x4 patches
    assert torch.isfinite(out.loss)
    model.eval()  # evaluation and reconstructions predict every patch
    assert model(torch.randn(2, 1, 4, 16, 16)).pred.shape == (2, 32, 32)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.img_size=[1,2,3,4]", "img_size"),
        ("model.tubelet_size=2", "tubelet_size"),
        ("model.cls_token=false", "pool 'cls'"),
        ("model.masking=tube", "needs clips"),
        ("model.pos_embed=learned", "pos_embed"),
        ("model.target_norm=global", "target_norm"),
    ],
)
def test_bad_nd_configs_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override, "model.pool=cls"])


def test_family_masking_strategies_drive_mae_on_images_only():
    model = tiny(img_size=16, in_chans=1, patch_size=4, masking="block")
    mask = model.draw_mask(2, "cpu", torch.Generator().manual_seed(0))
    assert mask.ids_keep.shape == (2, int(16 * 0.25))
    from mimkit.masking import block_masking

    same = block_masking(2, (4, 4), 0.75, "cpu", torch.Generator().manual_seed(0))
    assert torch.equal(mask.ids_keep.sort(1).values, same.ids_keep.sort(1).values)
    with pytest.raises(ConfigError, match="2-D images"):
        load_config(None, ["model.img_size=[4,16,16]", "model.patch_size=4", "model.masking=block"])


def test_indivisible_clip_is_refused():
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(
            None, ["model.img_size=[5,32,32]", "model.patch_size=8", "model.tubelet_size=2"]
        )
