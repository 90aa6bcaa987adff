"""OPTIN-style structured pruning, and the per-block head counts and MLP widths it needs."""

import dataclasses
import re
import shutil

import pytest
import torch
import yaml

from mimkit.bench.flops import block_flops, encoder_inference_flops
from mimkit.compress.optin import (
    StructuredPlan,
    distortion,
    gated_block,
    head_importance,
    masked_model,
    optin_checkpoint,
    plan_to_flops,
    prune_structured,
    trajectory,
    unit_importance,
)
from mimkit.config import RunConfig
from mimkit.errors import ConfigError
from mimkit.models import ModelConfig, resolve_model_config
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.mae import build_mae
from mimkit.train.checkpoint import load_model, save_checkpoint


def tiny(depth=3, pool="cls", heads=4):
    torch.manual_seed(0)
    return build_mae(
        ModelConfig(
            img_size=8, in_chans=1, patch_size=2, embed_dim=32, depth=depth, num_heads=heads,
            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, pool=pool,
        )
    ).eval()  # fmt: skip


def save_tiny(folder, model):
    cfg = RunConfig()
    cfg.model = model.cfg
    return save_checkpoint(folder, model, cfg)


# --- per-block sizes in the model ------------------------------------------------------------


def test_per_block_heads_and_widths_build_blocks_of_those_sizes():
    cfg = resolve_model_config(
        ModelConfig(
            img_size=8, in_chans=1, patch_size=2, embed_dim=32, depth=3, num_heads=4,
            block_heads=[1, 4, 2], block_mlp_hidden=[5, 128, 7],
        )
    )  # fmt: skip
    enc = VisionTransformer(cfg)
    assert [b.attn.num_heads for b in enc.blocks] == [1, 4, 2]
    assert [b.attn.qkv.out_features for b in enc.blocks] == [3 * 8, 3 * 32, 3 * 16]
    assert [b.mlp.fc1.out_features for b in enc.blocks] == [5, 128, 7]
    assert enc(torch.randn(2, 1, 8, 8)).shape == (2, 17, 32)
    uniform = dataclasses.replace(cfg, block_heads=None, block_mlp_hidden=None)
    n = 17
    assert encoder_inference_flops(uniform) == 2 * 16 * 4 * 32 + 3 * block_flops(n, 32, 4.0)
    assert encoder_inference_flops(cfg) < encoder_inference_flops(uniform)


@pytest.mark.parametrize(
    "field, value, words",
    [("block_heads", [1, 2], "3 (model.depth) counts"), ("block_mlp_hidden", [4, 0, 4], ">= 1"),
     ("block_heads", [1, 5, 1], "more heads than model.num_heads")],
)  # fmt: skip
def test_bad_per_block_sizes_are_one_line_config_errors(field, value, words):
    cfg = ModelConfig(img_size=8, in_chans=1, patch_size=2, embed_dim=32, depth=3, num_heads=4)
    with pytest.raises(ConfigError, match=re.escape(words)) as info:
        resolve_model_config(dataclasses.replace(cfg, **{field: value}))
    assert "\n" not in str(info.value) and f"model.{field}" in str(info.value)


def test_a_checkpoint_from_before_per_block_sizes_still_loads(tmp_path):
    model = tiny()
    folder = save_tiny(tmp_path / "ckpt", model)
    tree = yaml.safe_load((folder / "config.yaml").read_text())
    for key in ("block_heads", "block_mlp_hidden"):  # as written before these fields existed
        tree["model"].pop(key)
    (folder / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    loaded, cfg = load_model(folder)
    assert cfg.model.block_heads is None and cfg.model.heads_per_block() == [4, 4, 4]
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded.encoder.features(x), model.encoder.features(x))


# --- importance -----------------------------------------------------------------------------


def test_gates_of_one_are_the_plain_block_and_a_zero_head_gate_removes_the_head():
    block = tiny().encoder.blocks[0]
    x = torch.randn(2, 17, 32)
    assert torch.allclose(
        gated_block(block, x, torch.ones(4), torch.ones(128)), block(x), atol=1e-6
    )
    with torch.no_grad():
        block.attn.proj.weight[:, 8:16] = 0  # head 1's columns
    gate = torch.tensor([1.0, 0.0, 1.0, 1.0])
    assert torch.allclose(gated_block(tiny().encoder.blocks[0], x, gate), block(x), atol=1e-6)


def test_a_head_that_does_nothing_scores_zero():
    model = tiny()
    with torch.no_grad():
        model.encoder.blocks[1].attn.proj.weight[:, 16:24] = 0  # head 2 of block 1 is dead
    scores = head_importance(model.encoder, torch.randn(4, 1, 8, 8))
    assert scores[1][2] == pytest.approx(0.0, abs=1e-10)
    assert all(
        s > 1e-6 for row in scores for k, s in enumerate(row) if row is not scores[1] or k != 2
    )


def test_unit_estimate_follows_the_exact_distortion_of_masking_each_unit():
    model = tiny(depth=2)
    enc = model.encoder
    images = torch.randn(4, 1, 8, 8)
    est = unit_importance(enc, images, probes=96, chunk=32)[1]
    h = enc.blocks[0](enc.embed(images))
    base = trajectory(enc, 1, h)
    exact = []
    for j in range(8):
        gate = torch.ones(128)
        gate[j] = 0
        exact.append(distortion(base, trajectory(enc, 1, h, unit_gates={1: gate})))
    exact = torch.tensor(exact, dtype=torch.float64)
    ratio = est[:8] / exact
    assert ratio.min() > 0.5 and ratio.max() < 1.6  # 96 probes: about 15% noise per unit


# --- the plan and the smaller model -----------------------------------------------------------


def test_plan_fits_the_budget_and_keeps_one_head_and_unit_per_block():
    cfg = tiny().cfg
    gen = torch.Generator().manual_seed(0)
    heads = [torch.rand(4, generator=gen) for _ in range(3)]
    units = [torch.rand(128, generator=gen) for _ in range(3)]
    full = encoder_inference_flops(cfg)
    for target in (0.3, 0.5, 0.8, 1.0):
        plan = plan_to_flops(cfg, heads, units, target)
        pruned_cfg = dataclasses.replace(
            cfg, block_heads=plan.heads_per_block(), block_mlp_hidden=plan.mlp_hidden_per_block()
        )
        flops = encoder_inference_flops(pruned_cfg)
        assert flops <= target * full * (1 + 1e-9)
        assert flops >= target * full - 4 * 17 * 32  # within one MLP unit of the budget
        assert all(len(h) >= 1 for h in plan.heads) and all(len(u) >= 1 for u in plan.units)
        for i in range(3):
            assert int(heads[i].argmax()) in plan.heads[i]
    with pytest.raises(ConfigError, match="below the smallest encoder"):
        plan_to_flops(cfg, heads, units, 0.05)


@pytest.mark.parametrize("pool", ["cls", "avg"])
def test_pruned_model_is_smaller_matches_its_plan_and_equals_the_masked_model(pool):
    model = tiny(pool=pool)
    gen = torch.Generator().manual_seed(1)
    heads = [torch.rand(4, generator=gen) for _ in range(3)]
    units = [torch.rand(128, generator=gen) for _ in range(3)]
    plan = plan_to_flops(model.cfg, heads, units, 0.5)
    pruned = prune_structured(model, plan)
    assert [b.attn.num_heads for b in pruned.encoder.blocks] == plan.heads_per_block()
    assert [b.mlp.fc1.out_features for b in pruned.encoder.blocks] == plan.mlp_hidden_per_block()
    assert pruned.cfg.block_heads == plan.heads_per_block()
    count = lambda m: sum(p.numel() for p in m.encoder.parameters())  # noqa: E731
    assert count(pruned) < count(model)
    x = torch.randn(3, 1, 8, 8)
    expected = masked_model(model, plan).encoder(x)
    assert torch.allclose(pruned.encoder(x), expected, atol=1e-5)
    assert not torch.allclose(model.encoder(x), expected, atol=1e-3)  # the masks did something


def test_optin_checkpoint_loads_without_the_original_and_gives_the_masked_outputs(tmp_path):
    model = tiny()
    source = save_tiny(tmp_path / "source", model)
    images = torch.randn(8, 1, 8, 8)
    record = optin_checkpoint(source, tmp_path / "pruned", images, 0.6, probes=4)
    assert record["flops_fraction"] <= 0.6 and record["params_after"] < record["params_before"]
    shutil.rmtree(source)  # the pruned checkpoint must stand on its own
    loaded, cfg = load_model(tmp_path / "pruned")
    assert cfg.model.block_heads == record["heads_after"]
    assert cfg.model.block_mlp_hidden == record["mlp_hidden_after"]
    assert [len(h) for h in record["kept_heads"]] == record["heads_after"]
    plan = StructuredPlan(record["kept_heads"], record["kept_units"])
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(loaded.encoder(x), masked_model(model, plan).encoder(x), atol=1e-5)


@pytest.mark.parametrize("to", ["hf", "timm"])
def test_a_pruned_encoder_is_refused_by_uniform_formats_in_one_line(tmp_path, capsys, to):
    from test_cli import assert_one_line_error

    from mimkit.cli import main

    model = tiny()
    plan = plan_to_flops(model.cfg, [torch.rand(4)] * 3, [torch.rand(128)] * 3, 0.6)
    save_tiny(tmp_path / "ck", prune_structured(model, plan))
    code = main(["export", str(tmp_path / "ck"), "--to", to, str(tmp_path / "out")])
    assert_one_line_error(capsys, code, r"structurally pruned encoder.*use --to safetensors")
    assert main(["export", str(tmp_path / "ck"), "--to", "safetensors", str(tmp_path / "o")]) == 0


def test_block_pruning_of_a_structurally_pruned_model_keeps_the_kept_blocks_sizes():
    from mimkit.compress.prune import prune_blocks

    model = tiny()
    plan = plan_to_flops(model.cfg, [torch.rand(4)] * 3, [torch.rand(128)] * 3, 0.5)
    pruned = prune_structured(model, plan)
    fewer = prune_blocks(pruned, [0, 2])
    assert fewer.cfg.block_heads == [plan.heads_per_block()[i] for i in (0, 2)]
    assert fewer.cfg.block_mlp_hidden == [plan.mlp_hidden_per_block()[i] for i in (0, 2)]
    assert fewer.encoder(torch.randn(1, 1, 8, 8)).shape == (1, 17, 32)
