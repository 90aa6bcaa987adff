import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mimkit.models.pos_embed import resample_pos_embed, sincos_2d


def reference_sincos(dim: int, gh: int, gw: int) -> np.ndarray:
    """The MAE paper code's formula, written out with numpy: w-coordinate first, then h."""

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_w, grid_h = np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32))
    return np.concatenate([one_d(dim // 2, grid_w), one_d(dim // 2, grid_h)], axis=1)


@settings(max_examples=25, deadline=None)
@given(dim=st.sampled_from([4, 8, 16, 64, 192]), gh=st.integers(1, 9), gw=st.integers(1, 9))
def test_matches_reference_formula(dim, gh, gw):
    ours = sincos_2d(dim, gh, gw)
    np.testing.assert_allclose(ours.numpy(), reference_sincos(dim, gh, gw), atol=1e-6)


def test_cls_row_is_zero_and_rows_are_distinct():
    table = sincos_2d(32, 4, 5, cls_token=True)
    assert table.shape == (21, 32)
    assert torch.all(table[0] == 0)
    assert torch.unique(table[1:], dim=0).shape[0] == 20


def test_rejects_dimension_not_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(6, 2, 2)


def test_resample_keeps_prefix_and_identity_when_same_grid():
    table = sincos_2d(16, 4, 4, cls_token=True)[None]
    assert resample_pos_embed(table, (4, 4), (4, 4)) is table
    bigger = resample_pos_embed(table, (8, 6), (4, 4))
    assert bigger.shape == (1, 1 + 48, 16)
    assert torch.equal(bigger[:, 0], table[:, 0])
