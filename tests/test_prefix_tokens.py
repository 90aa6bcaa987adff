"""Encoders without a cls token (model.cls_token=false, pool=avg) and position tables at a new
grid: the fixed sin-cos table is regenerated exactly, a learned one interpolated."""

import logging

import pytest
import torch
from conftest import tiny_model_config
from interop_helpers import randomise_

from mimkit.compress.tome import bipartite_soft_matching, tome_features, tome_tokens
from mimkit.eval.finetune import encoder_weights
from mimkit.interop.common import adapt_to_grid
from mimkit.models.config import resolve_model_config
from mimkit.models.pos_embed import position_table, resample_pos_embed
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.mae import build_mae


def no_cls(**kw):
    return resolve_model_config(tiny_model_config(cls_token=False, pool="avg", **kw))


def test_finetune_weights_without_cls_token_load_at_a_new_size():
    old, new = no_cls(img_size=16), no_cls(img_size=24)  # grid 4x4 -> 6x6, no prefix row
    torch.manual_seed(0)
    weights = build_mae(old).state_dict()
    encoder = VisionTransformer(new)
    encoder.load_state_dict(encoder_weights(weights, old, new))
    assert encoder.num_prefix_tokens == 0
    assert torch.equal(encoder.pos_embed, position_table("sincos", 32, (6, 6), cls_token=False))
    assert encoder.features(torch.randn(2, 3, 24, 24)).shape == (2, 32)


def test_finetune_weights_regenerate_the_sin_cos_table_with_a_cls_token():
    old = resolve_model_config(tiny_model_config(img_size=16))
    new = resolve_model_config(tiny_model_config(img_size=[24, 32]))
    weights = build_mae(old).state_dict()
    enc = encoder_weights(weights, old, new)
    assert torch.equal(enc["pos_embed"], position_table("sincos", 32, (6, 8), cls_token=True))


def test_finetune_weights_interpolate_a_learned_table_without_cls_token(caplog):
    old, new = no_cls(img_size=16), no_cls(img_size=24)
    weights = {
        f"encoder.{k}": v for k, v in randomise_(VisionTransformer(old)).state_dict().items()
    }
    with caplog.at_level(logging.WARNING, logger="mimkit"):
        enc = encoder_weights(weights, old, new)
    assert "position embedding resampled from grid (4, 4) to (6, 6)" in caplog.text
    expected = resample_pos_embed(weights["encoder.pos_embed"], (6, 6), (4, 4), 0)
    assert torch.equal(enc["pos_embed"], expected)
    assert enc["pos_embed"].shape == (1, 36, 32)


def test_video_table_without_cls_token_is_regenerated_along_time_too():
    old = no_cls(img_size=[4, 16, 16], tubelet_size=2, pos_embed="sincos_index")
    new = no_cls(img_size=[8, 16, 16], tubelet_size=2, pos_embed="sincos_index")
    enc = encoder_weights(build_mae(old).state_dict(), old, new)
    assert torch.equal(enc["pos_embed"], VisionTransformer(new).pos_embed)


@pytest.mark.parametrize("cls_token", [True, False])
def test_import_at_a_new_size_regenerates_sin_cos_and_interpolates_learned(cls_token, caplog):
    kw = dict(cls_token=cls_token, pool="cls" if cls_token else "avg")
    old = resolve_model_config(tiny_model_config(img_size=16, **kw))
    new = resolve_model_config(tiny_model_config(img_size=32, **kw))
    state = {f"encoder.{k}": v for k, v in VisionTransformer(old).state_dict().items()}
    state |= {f"decoder.{k}": v for k, v in build_mae(old).decoder.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="mimkit"):
        fixed = adapt_to_grid(state, old, new)
    assert "interpolating" not in caplog.text and "regenerated" in caplog.text
    assert torch.equal(fixed["encoder.pos_embed"], VisionTransformer(new).pos_embed)
    assert torch.equal(fixed["decoder.pos_embed"], build_mae(new).decoder.pos_embed)

    learned = randomise_(VisionTransformer(old)).pos_embed  # an imported, trained table
    prefix = 1 if cls_token else 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mimkit"):
        out = adapt_to_grid({"encoder.pos_embed": learned}, old, new)
    assert "interpolating position embeddings from grid (4, 4) to (8, 8)" in caplog.text
    expected = resample_pos_embed(learned, (8, 8), (4, 4), num_prefix_tokens=prefix)
    assert out["encoder.pos_embed"].shape == (1, prefix + 64, 32)
    assert torch.equal(out["encoder.pos_embed"], expected)


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


def test_import_of_a_checkpoint_at_a_new_size_has_the_tables_a_model_built_there_has(tmp_path):
    from mimkit.config import RunConfig
    from mimkit.interop.convert import load_foreign
    from mimkit.train.checkpoint import save_checkpoint

    cfg = RunConfig(model=no_cls(img_size=16))
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ck", build_mae(cfg.model), cfg)
    loaded = load_foreign(tmp_path / "ck", overrides=["model.img_size=[16,32]"]).model
    fresh = build_mae(no_cls(img_size=[16, 32]))
    assert torch.equal(loaded.encoder.pos_embed, fresh.encoder.pos_embed)
    assert torch.equal(loaded.decoder.pos_embed, fresh.decoder.pos_embed)
