import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mimkit.patches import patchify, unpatchify


@settings(max_examples=40, deadline=None)
@given(
    patch=st.integers(1, 8),
    gh=st.integers(1, 6),
    gw=st.integers(1, 6),
    channels=st.integers(1, 5),
    batch=st.integers(1, 3),
)
def test_patchify_round_trip_any_shape(patch, gh, gw, channels, batch):
    images = torch.randn(batch, channels, gh * patch, gw * patch)
    patches = patchify(images, patch)
    assert patches.shape == (batch, gh * gw, patch * patch * channels)
    assert torch.equal(unpatchify(patches, patch, (gh, gw), channels), images)


def test_patch_layout_matches_mae_convention():
    # patch 0 is the top-left p x p block; its vector is ordered (row, col, channel)
    images = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)
    patches = patchify(images, 2)
    expected = torch.stack([images[0, :, r, c] for r in range(2) for c in range(2)]).reshape(-1)
    assert torch.equal(patches[0, 0], expected)
    # patches run along rows first: patch 1 is the block right of patch 0
    assert torch.equal(patches[0, 1, :2], images[0, :, 0, 2])
    assert patches.shape[1] == 6


def test_patchify_rejects_indivisible_size():
    import pytest

    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 1, 10, 10), 4)
