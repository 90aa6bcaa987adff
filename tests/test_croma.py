"""CROMA: 2D-ALiBi biases, a symmetric contrastive loss, and encoders that run at any size."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_fmnist, pretrain_multi_preset, tiny_model_config

from mimkit.cli.main import main
from mimkit.data.multi_synth import make_fmnist_modal, make_tile_groups
from mimkit.errors import ConfigError
from mimkit.masking import MaskingConfig
from mimkit.models.alibi import AlibiViT, alibi_bias, alibi_slopes
from mimkit.models.config import resolve_model_config
from mimkit.models.vit import Block
from mimkit.objectives.croma import CROMA, CROMASettings, symmetric_info_nce
from mimkit.train.checkpoint import load_model


def build(position="alibi", **kw):
    cfg = resolve_model_config(tiny_model_config(cls_token=False, pool="avg", **kw))
    settings = CROMASettings(inputs={"optical": 3, "radar": 2}, position=position)
    settings.check(cfg)
    torch.manual_seed(0)
    return CROMA(cfg, MaskingConfig(ratio=0.75), settings)


def pair(batch=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "optical": torch.randn(batch, 3, size, size, generator=g),
        "radar": torch.randn(batch, 2, size, size, generator=g),
    }


def test_alibi_bias_depends_only_on_relative_position():
    small = alibi_bias((5, 5), heads=4)[0]  # (heads, 25, 25)
    large = alibi_bias((9, 11), heads=4)[0]

    def at(grid_w, r, c):
        return r * grid_w + c

    for (r1, c1), (r2, c2) in [((0, 0), (4, 4)), ((1, 3), (2, 0)), ((4, 1), (4, 2))]:
        for dr, dc in [(0, 0), (3, 5), (4, 6)]:  # translations inside the larger grid
            shifted = large[:, at(11, r1 + dr, c1 + dc), at(11, r2 + dr, c2 + dc)]
            assert torch.allclose(shifted, small[:, at(5, r1, c1), at(5, r2, c2)])
    # and it does depend on the offset: farther is more negative, per head's slope
    assert torch.allclose(small[:, 0, 0], torch.zeros(4))
    assert torch.allclose(small[:, 0, at(5, 3, 4)], -5 * alibi_slopes(4))


def test_cross_bias_is_between_the_two_sets_of_positions():
    ids_q = torch.tensor([[0, 5, 24]])
    ids_k = torch.tensor([[6, 24]])
    bias = alibi_bias((5, 5), heads=2, ids_q=ids_q, ids_k=ids_k)
    full = alibi_bias((5, 5), heads=2)
    assert bias.shape == (1, 2, 3, 2)
    assert torch.equal(bias[0], full[0][:, ids_q[0]][:, :, ids_k[0]])


def test_alibi_slopes_follow_the_geometric_sequence():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    assert torch.allclose(alibi_slopes(3), torch.tensor([2**-4, 2**-8, 2**-2]))


def test_the_contrastive_loss_is_symmetric():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    scale = torch.tensor(1 / 0.07)
    assert torch.allclose(symmetric_info_nce(a, b, scale), symmetric_info_nce(b, a, scale))
    # each one-directional half differs: the symmetry is the averaging, not the data
    logits = scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    labels = torch.arange(8)
    one_way, other_way = F.cross_entropy(logits, labels), F.cross_entropy(logits.T, labels)
    assert not math.isclose(one_way.item(), other_way.item(), rel_tol=1e-3)
    assert math.isclose(
        symmetric_info_nce(a, b, scale).item(), (one_way + other_way).item() / 2, rel_tol=1e-5
    )


def test_swapping_the_modalities_gives_the_same_contrastive_loss():
    model = build()
    g = torch.Generator().manual_seed(1)
    t1, t2 = torch.randn(4, 16, 32, generator=g), torch.randn(4, 16, 32, generator=g)
    loss = model.contrastive_loss(t1, t2)
    model.heads = torch.nn.ModuleList(reversed(list(model.heads)))
    assert torch.allclose(model.contrastive_loss(t2, t1), loss)


def test_croma_trains_on_both_inputs_with_independent_masks():
    model = build().train()
    mask = model.draw_mask(6, "cpu", torch.Generator().manual_seed(0)).select(slice(1, 5))
    assert mask.first.ids_keep.shape == (4, 4)  # 16 patches, 75% hidden
    assert not torch.equal(mask.first.ids_keep, mask.second.ids_keep)
    out = model(pair(), mask=mask)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    for name in ("encoder.blocks.0.attn.qkv.weight", "second_encoder.patch_embed.proj.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert model.fusion[0].cross.kv.weight.grad.abs().sum() > 0
    assert model.logit_scale.grad is not None


def test_the_alibi_encoder_has_no_position_table_and_runs_at_twice_the_size():
    model = build()
    assert isinstance(model.encoder, AlibiViT)
    assert not any("pos_embed" in k for k in model.state_dict() if k.startswith("encoder."))
    big = pair(size=32)
    for images in ({"optical": big["optical"]}, {"radar": big["radar"]}, big):
        assert model.encode(images).shape == (4, 32)
    # a sin-cos table is made for one grid: the same encoder without ALiBi cannot
    with pytest.raises(RuntimeError):
        build(position="sincos").encode({"optical": big["optical"]})


def test_evaluation_on_each_encoder_and_on_the_fusion():
    model = build()
    images = pair()
    optical = model.encode({"optical": images["optical"]})
    radar = model.encode({"radar": images["radar"]})
    fused = model.encode(images)
    assert optical.shape == radar.shape == fused.shape == (4, 32)
    assert not torch.allclose(fused, optical) and not torch.allclose(fused, radar)
    assert torch.allclose(model.encode(images["optical"]), optical)
    assert torch.allclose(model.encoder.features(images["optical"]), optical)
    with pytest.raises(ValueError, match="inputs are"):
        model.encode({"thermal": images["radar"]})


def test_a_block_without_a_bias_is_the_plain_attention_it_was():
    torch.manual_seed(0)
    block = Block(32, 4).eval()
    x = torch.randn(2, 10, 32)
    attn = block.attn
    h = block.norm1(x)
    q, k, v = attn.qkv(h).view(2, 10, 3, 4, 8).unbind(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    weights = (q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(dim=-1)
    y = x + attn.proj((weights @ v).transpose(1, 2).reshape(2, 10, 32))
    reference = y + block.mlp(block.norm2(y))
    assert torch.allclose(block(x), reference, atol=1e-5)
    assert torch.allclose(block(x, torch.zeros(1, 4, 10, 10)), reference, atol=1e-5)
    assert not torch.allclose(block(x, alibi_bias((2, 5), 4)), reference, atol=1e-3)


def test_settings_are_checked_against_the_model():
    cfg = resolve_model_config(tiny_model_config(cls_token=False, pool="avg"))
    with pytest.raises(ConfigError, match="method.position"):
        CROMASettings(inputs={"optical": 3, "radar": 2}, position="rope").check(cfg)
    with pytest.raises(ConfigError, match="model.in_chans"):
        CROMASettings(inputs={"optical": 2, "radar": 3}).check(cfg)
    with pytest.raises(ConfigError, match="exactly two"):
        CROMASettings(inputs={"optical": 3, "radar": 2, "dem": 1}).check(cfg)
    with pytest.raises(ConfigError, match="cls_token"):
        CROMASettings(inputs={"optical": 3, "radar": 2}).check(
            resolve_model_config(tiny_model_config())
        )


def test_the_preset_trains_reloads_evaluates_and_exports_through_the_cli(tmp_path, capsys):
    root = make_tile_groups(tmp_path / "tiles", train=8, test=6, size=16, progress=False)
    run = tmp_path / "run"
    pretrain_multi_preset("configs/synthetic_tiles_croma_tiny.yaml", root, run, capsys)
    assert main(["export", str(run), "--to", "safetensors", str(tmp_path / "exported")]) == 0
    model, cfg = load_model(tmp_path / "exported")
    assert cfg.method.name == "croma" and isinstance(model.encoder, AlibiViT)
    big = {"optical": torch.randn(2, 3, 32, 32), "radar": torch.randn(2, 3, 32, 32)}
    assert model.encode(big).shape == (2, 32)


@needs_fmnist
@pytest.mark.slow  # makes its scenes from the whole of Fashion-MNIST
def test_the_scene_preset_reads_image_and_depth_only(tmp_path, capsys):
    """configs/fmnist_croma_tiny.yaml: fmnist-modal's image and depth as the two sensors; its
    seg maps stay unread, and the image encoder alone runs on a larger grid."""
    root = make_fmnist_modal(tmp_path / "scenes", train=8, test=6, size=16, progress=False)
    run = tmp_path / "run"
    pretrain_multi_preset("configs/fmnist_croma_tiny.yaml", root, run, capsys)
    model, cfg = load_model(run)
    assert list(cfg.method.inputs) == ["image", "depth"]
    assert list(cfg.data.inputs) == ["image", "depth"]  # the scenes' seg maps are not read
    assert model.encode({"image": torch.randn(2, 1, 32, 32)}).shape == (2, 32)


def test_alibi_attention_maps_include_the_bias_and_match_the_forward_pass():
    encoder = build().encoder.eval()
    x = pair()["optical"]
    maps = encoder.attention_maps(x)
    assert len(maps) == len(encoder.blocks) and maps[0].shape == (4, 2, 16, 16)
    block, h = encoder.blocks[0], encoder.embed(x)
    bias = alibi_bias(encoder.grid_of(x), 2)
    # the maps' weights give the block's attention output exactly
    v = block.attn.qkv(block.norm1(h)).view(4, 16, 3, 2, 16).unbind(2)[2].transpose(1, 2)
    out = block.attn.proj((maps[0] @ v).transpose(1, 2).reshape(4, 16, 32))
    assert torch.allclose(out, block.attn(block.norm1(h), bias), atol=1e-5)
    # and they differ from the unbiased weights: ALiBi is in them
    assert not torch.allclose(maps[0], block.attn.attention_weights(block.norm1(h)), atol=1e-3)
