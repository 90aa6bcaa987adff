"""Fine-tuning with a token reduction in the loop (issue 22): the classifier reads the reduced
tokens the frozen-feature path reads, gradients reach the encoder through them, and a fine-tune
records and is scored with the reduction it was trained with."""

import json

import pytest
import torch
from eval_helpers import make_learnable_idx, save_tiny_checkpoint

from mimkit.compress.diffrate import Schedule, diffrate_features
from mimkit.compress.iared2 import (
    PolicySpec,
    RandomTokenPolicy,
    TokenPolicy,
    iared2_features,
    stage_starts_for,
)
from mimkit.compress.reductions import diffrate_reduction, iared2_reduction, tome_reduction
from mimkit.compress.tome import tome_features, tome_flops, tome_schedule_for
from mimkit.errors import ConfigError
from mimkit.eval.finetune import ViTClassifier, finetune, split_settings
from mimkit.models import ModelConfig
from mimkit.models.vit import VisionTransformer
from mimkit.train.checkpoint import load_config_file, read_weights

CFG = ModelConfig(img_size=16, in_chans=1, patch_size=4, embed_dim=32, depth=4, num_heads=2)


def encoder() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(CFG)


def reductions(enc: VisionTransformer):
    starts = stage_starts_for(CFG.depth, 2)
    torch.manual_seed(1)
    policy = TokenPolicy(PolicySpec(CFG.embed_dim, starts))
    return {
        "tome": (tome_reduction([2, 2, 1, 1]), lambda x: tome_features(enc, x, [2, 2, 1, 1])),
        "diffrate": (
            diffrate_reduction(Schedule([12, 12, 8, 8], [12, 10, 8, 6])),
            lambda x: diffrate_features(enc, x, Schedule([12, 12, 8, 8], [12, 10, 8, 6])),
        ),
        "iared2": (
            iared2_reduction(policy, [10, 5], CFG.num_patches),
            lambda x: iared2_features(enc, policy, x, [10, 5]),
        ),
    }


@pytest.mark.parametrize("name", ["tome", "diffrate", "iared2"])
def test_the_classifier_pools_the_reduced_tokens_the_feature_path_reads(name):
    enc = encoder()
    reduction, features = reductions(enc)[name]
    model = ViTClassifier(enc, 3, head="norm").eval()
    x = torch.randn(4, 1, 16, 16)
    plain = model.pooled(x)
    model.reduction = reduction
    with torch.no_grad():
        reduced = model.pooled(x)
    torch.testing.assert_close(reduced, features(x), rtol=1e-5, atol=1e-5)
    assert (reduced - plain).abs().max() > 1e-3  # the reduction changed what the head sees


@pytest.mark.parametrize("name", ["tome", "diffrate", "iared2"])
def test_gradients_reach_every_block_through_the_reduced_tokens(name):
    enc = encoder()
    model = ViTClassifier(enc, 3, head="fc_norm").train()
    model.reduction = reductions(enc)[name][0]
    model(torch.randn(4, 1, 16, 16)).logsumexp(1).sum().backward()
    for i, block in enumerate(enc.blocks):
        grad = block.mlp.fc1.weight.grad
        assert grad is not None and grad.abs().sum() > 0, f"block {i}"


def test_fc_norm_head_weighs_merged_tokens_by_the_patches_they_stand_for():
    enc = encoder()
    model = ViTClassifier(enc, 3, head="fc_norm").eval()
    model.reduction = tome_reduction([3, 3, 3, 3])
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        tokens, size = model.reduction.tokens(enc, x)
        patch, weight = tokens[:, 1:], size[:, 1:]
        expected = model.fc_norm((patch * weight).sum(1) / weight.sum(1))
        unweighted = model.fc_norm(patch.mean(1))
        assert torch.allclose(model.pooled(x), expected, atol=1e-6)
        assert not torch.allclose(expected, unweighted, atol=1e-4)  # sizes differ after merging


def test_iared2_reduction_leaves_its_policy_out_of_the_trained_parameters():
    enc = encoder()
    policy = TokenPolicy(PolicySpec(CFG.embed_dim, stage_starts_for(CFG.depth, 2)))
    model = ViTClassifier(enc, 3)
    model.reduction = iared2_reduction(policy, [10, 5], CFG.num_patches)
    assert not any(k.startswith("reduction") for k in model.state_dict())
    assert all(not p.requires_grad for p in policy.parameters())
    random = iared2_reduction(RandomTokenPolicy([0, 2], seed=3), [10, 5], CFG.num_patches)
    assert random.record["policy"] == "random tokens"
    with pytest.raises(ConfigError, match="non-increasing"):
        iared2_reduction(policy, [10, 12], CFG.num_patches)  # counts may not grow


def test_tome_schedule_for_a_target_reaches_it_and_changes_with_it():
    full = tome_flops(CFG, [0] * CFG.depth)
    for target in (0.5, 0.65, 0.8):
        rs = tome_schedule_for(CFG, target)
        assert abs(tome_flops(CFG, rs) / full - target) < 0.05
        assert rs == sorted(rs, reverse=True)  # r + 1 first, then r
    assert tome_schedule_for(CFG, 0.5) != tome_schedule_for(CFG, 0.8)
    with pytest.raises(ValueError, match="schedule of 3 blocks for 4"):
        tome_reduction([1, 1, 1]).tokens(encoder(), torch.randn(1, 1, 16, 16))


@pytest.mark.slow
def test_finetune_records_the_reduction_and_is_scored_with_it(tmp_path):
    data = make_learnable_idx(tmp_path / "idx", n_train=64, n_test=32)
    folder, _, _ = save_tiny_checkpoint(tmp_path, data, seed=1)
    cfg, weights = load_config_file(folder), read_weights(folder / "model.safetensors")
    train, ft = split_settings(dict(epochs=1, batch_size=16, progress=False, seed=0))
    rs = [4] * cfg.model.depth
    reduced = finetune(cfg, weights, train, ft, tmp_path / "tome", reduction=tome_reduction(rs))
    plain = finetune(cfg, weights, train, ft, tmp_path / "plain")
    record = json.loads((tmp_path / "tome" / "finetune.json").read_text())
    assert record["token_reduction"] == {"method": "tome", "r_per_block": rs, "proportional": True}
    assert "token_reduction" not in json.loads((tmp_path / "plain" / "finetune.json").read_text())
    a = read_weights(reduced.checkpoint / "model.safetensors")
    b = read_weights(plain.checkpoint / "model.safetensors")
    assert a.keys() == b.keys()  # the reduction adds nothing to the checkpoint
    assert any(not torch.equal(a[k], b[k]) for k in a)  # but training saw other tokens
