"""`mimkit inspect attention|embed`: attention weights, rollout, projections, block statistics."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import method_parts
from eval_helpers import make_learnable_idx, save_tiny_checkpoint
from PIL import Image
from test_cli import assert_one_line_error

from mimkit.cli import main
from mimkit.compress.importance import block_scores
from mimkit.inspect.attention import (
    CLS_QUERY,
    MEAN_QUERY,
    attention_over_patches,
    rollout,
    save_attention_figures,
)
from mimkit.inspect.embed import block_statistics, project
from mimkit.objectives.mae import build_mae


def encoder_of(**kw):
    cfg = dict(
        embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
        decoder_num_heads=2, img_size=16, in_chans=1, patch_size=4,
    )  # fmt: skip
    cfg.update(kw)
    torch.manual_seed(0)
    return build_mae(*method_parts(**cfg)).encoder.eval()


@pytest.fixture()
def ckpt(tmp_path):
    data = make_learnable_idx(tmp_path / "idx", n_train=40, n_test=24)
    folder, _, _ = save_tiny_checkpoint(tmp_path, data)
    return folder


def test_attention_weights_are_what_sdpa_applies():
    enc = encoder_of()
    attn = enc.blocks[0].attn
    x = torch.randn(3, 17, 32)
    w = attn.attention_weights(x)
    assert w.shape == (3, 2, 17, 17)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 17))
    _, _, v = attn.qkv(x).view(3, 17, 3, 2, 16).unbind(2)
    by_hand = attn.proj((w @ v.transpose(1, 2)).transpose(1, 2).reshape(3, 17, 32))
    torch.testing.assert_close(by_hand, attn(x), atol=1e-5, rtol=1e-5)


def test_attention_maps_follow_the_blocks_and_leave_training_mode_alone():
    enc = encoder_of(depth=3).train()
    x = torch.randn(2, 1, 16, 16)
    maps = enc.attention_maps(x)
    assert len(maps) == 3 and maps[0].shape == (2, 2, 17, 17)  # cls + 4x4 patches
    assert enc.training
    # block 2's weights are those of block 2's own input: the hidden state after block 1
    _, hidden = enc.eval()(x, return_hidden=True)
    b = enc.blocks[1]
    torch.testing.assert_close(maps[1], b.attn.attention_weights(b.norm1(hidden[1])))


def test_rollout_of_one_block_mixes_in_the_residual():
    n = 4
    onto_last = torch.zeros(1, 1, n, n)
    onto_last[..., -1] = 1.0  # every query attends to the last token only
    joint = rollout([onto_last], residual=0.5)[0]
    expected = 0.5 * torch.eye(n)
    expected[:, -1] += 0.5
    torch.testing.assert_close(joint, expected)
    two = rollout([onto_last, onto_last], residual=0.5)[0]
    torch.testing.assert_close(two, expected @ expected)
    torch.testing.assert_close(two.sum(-1), torch.ones(n))


def test_cls_query_and_mean_query_maps_sum_to_one_on_the_grid():
    x = torch.randn(2, 1, 16, 16)
    with_cls = attention_over_patches(encoder_of(), x)
    assert with_cls.query == CLS_QUERY and with_cls.heads.shape == (2, 2, 4, 4)
    no_cls = attention_over_patches(encoder_of(cls_token=False, pool="avg"), x)
    assert no_cls.query == MEAN_QUERY and no_cls.rollout.shape == (2, 4, 4)
    for maps in (with_cls, no_cls):
        torch.testing.assert_close(maps.heads.sum((-2, -1)), torch.ones(2, 2))
        torch.testing.assert_close(maps.rollout.sum((-2, -1)), torch.ones(2))


def test_clip_attention_is_drawn_per_frame(tmp_path):
    enc = encoder_of(img_size=[4, 16, 16], patch_size=4, tubelet_size=2)
    clips = torch.randint(0, 255, (2, 1, 4, 16, 16), dtype=torch.uint8)
    paths, maps = save_attention_figures(enc, clips, [0.5], [0.25], tmp_path)
    assert maps.heads.shape == (2, 2, 2, 4, 4)  # (items, heads, t-grid, h-grid, w-grid)
    assert [p.name for p in paths] == ["attention_item0.png", "attention_item1.png"]
    with Image.open(paths[0]) as im:
        assert im.width > 4 * 60  # a column per frame


def test_inspect_attention_command_writes_its_figure(ckpt, tmp_path, capsys):
    assert main(["inspect", "attention", str(ckpt), "--count", "3"]) == 0
    out = capsys.readouterr().out
    assert f"query: {CLS_QUERY}" in out
    figure = ckpt.parent / "inspect" / "attention.png"
    assert figure.is_file() and f"attention: {figure}" in out
    with Image.open(figure) as im:
        rows = np.asarray(im.convert("L"))
    assert rows.std() > 10  # a picture, not a blank page
    own = tmp_path / "shirt.png"
    Image.fromarray((np.arange(40 * 40).reshape(40, 40) % 255).astype(np.uint8)).save(own)
    assert main(["inspect", "attention", str(ckpt), str(own), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "attention.png").is_file()


def test_inspect_attention_bad_image_is_one_line_error(ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code = main(["inspect", "attention", str(ckpt), str(bad)])
    assert_one_line_error(capsys, code, r"bad\.png: cannot read image")


def test_block_statistics_use_prune_entropy_and_bounded_attention_entropy():
    enc = encoder_of(depth=3)
    images = torch.randint(0, 255, (4, 1, 16, 16), dtype=torch.uint8)
    stats = block_statistics(enc, images, [0.5], [0.25])
    assert stats["weight_entropy"] == pytest.approx(block_scores(enc.blocks, "entropy"))
    assert len(stats["feature_norm"]) == 3 and all(v > 0 for v in stats["feature_norm"])
    assert stats["attention_entropy_uniform"] == pytest.approx(math.log(17))
    assert all(0 < v <= math.log(17) + 1e-6 for v in stats["attention_entropy"])


def test_projections_keep_separated_clusters_apart():
    gen = np.random.default_rng(0)
    feats = np.concatenate([gen.normal(0, 0.1, (20, 8)), gen.normal(5, 0.1, (20, 8))])
    for method in ("pca", "tsne"):
        xy = project(feats, method)
        a, b = xy[:20], xy[20:]
        gap = np.linalg.norm(a.mean(0) - b.mean(0))
        spread = max(a.std(0).max(), b.std(0).max())
        assert gap > 3 * spread, method


def test_inspect_embed_command_writes_plots_and_statistics(ckpt, capsys):
    code = main(["inspect", "embed", str(ckpt), "--count", "24", "--projections", "pca", "tsne"])
    assert code == 0
    out_dir = ckpt.parent / "inspect"
    for name in ("embedding.png", "blocks.png"):
        with Image.open(out_dir / name) as im:
            assert im.width > 300 and np.asarray(im.convert("L")).std() > 5
    summary = json.loads((out_dir / "embed.json").read_text())
    assert summary["items"] == 24 and summary["projections"] == ["pca", "tsne"]
    assert len(summary["blocks"]["weight_entropy"]) == 2
    out = capsys.readouterr().out
    assert "block 2: feature norm" in out
