"""Encoders without a cls token (model.cls_token=false, pool=avg): token merging protects
only the prefix tokens the encoder has."""

import pytest
import torch
from conftest import tiny_model_config

from mimkit.compress.tome import bipartite_soft_matching, tome_features, tome_tokens
from mimkit.models.registry import resolve_model_config
from mimkit.models.vit import VisionTransformer


def tiny_encoder(**kw):
    torch.manual_seed(0)
    cfg = dict(img_size=16, in_chans=1, patch_size=2, depth=2)
    return VisionTransformer(resolve_model_config(tiny_model_config(**cfg, **kw))).eval()


def test_tome_without_cls_token_merges_every_token_and_pools_them_all():
    encoder = tiny_encoder(cls_token=False, pool="avg")
    x = torch.randn(2, 1, 16, 16)  # 64 patches, no prefix: |A| = 32 may all merge
    tokens, size = tome_tokens(encoder, x, r=100)
    assert tokens.shape[1] == 64 - 32 - 16
    assert torch.allclose(size.sum(dim=1).squeeze(-1), torch.full((2,), 64.0))
    assert (size[:, 0] > 1).all()  # the first patch is a patch like any other
    expected = (tokens * size).sum(1) / size.sum(1)
    assert torch.allclose(tome_features(encoder, x, r=100), expected)


def test_tome_protects_the_prefix_and_pools_patches_only_with_a_cls_token():
    encoder = tiny_encoder(pool="avg")
    x = torch.randn(2, 1, 16, 16)
    tokens, size = tome_tokens(encoder, x, r=5)
    assert torch.all(size[:, 0] == 1)
    expected = (tokens[:, 1:] * size[:, 1:]).sum(1) / size[:, 1:].sum(1)
    assert torch.allclose(tome_features(encoder, x, r=5), expected)


@pytest.mark.parametrize("protected", [0, 1, 2, 3])
def test_protected_prefix_tokens_stay_first_and_unmerged(protected):
    torch.manual_seed(protected)
    x = torch.randn(2, 9, 4)
    merge = bipartite_soft_matching(x, r=100, protected=protected)
    out = merge(x)
    assert torch.equal(out[:, :protected], x[:, :protected])
    size = merge(torch.ones(2, 9, 1))
    assert torch.all(size[:, :protected] == 1) and torch.all(size.sum(1) == 9)
