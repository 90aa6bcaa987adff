"""Layer-wise learning-rate decay and Mixup/CutMix with label smoothing."""

import numpy as np
import pytest
import torch
from conftest import tiny_model_overrides

from mimkit.config import load_config
from mimkit.eval.finetune import ViTClassifier
from mimkit.eval.mixup import mix_batch, smooth_one_hot, soft_cross_entropy
from mimkit.models.vit import VisionTransformer
from mimkit.train.optim import layer_decay_param_groups, set_lr, vit_layer_id


def tiny_classifier(tmp_path):
    cfg = load_config("configs/fmnist_mae_tiny.yaml", tiny_model_overrides(tmp_path))
    return ViTClassifier(VisionTransformer(cfg.model), 10)


def test_layer_ids_follow_depth():
    assert vit_layer_id("encoder.patch_embed.proj.weight", 6) == 0
    assert vit_layer_id("cls_token", 6) == 0
    assert vit_layer_id("encoder.blocks.0.attn.qkv.weight", 6) == 1
    assert vit_layer_id("encoder.blocks.5.mlp.fc2.bias", 6) == 6
    assert vit_layer_id("encoder.norm.weight", 6) == 7
    assert vit_layer_id("head.weight", 6) == 7


def test_layer_decay_scales_and_weight_decay(tmp_path):
    model = tiny_classifier(tmp_path)  # depth 2
    groups = layer_decay_param_groups(model, 0.05, 0.5, num_blocks=2)
    by_param = {}
    for g in groups:
        for p in g["params"]:
            by_param[id(p)] = g
    named = dict(model.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(named)
    assert by_param[id(named["head.weight"])]["lr_scale"] == 1.0
    assert by_param[id(named["encoder.blocks.1.attn.qkv.weight"])]["lr_scale"] == 0.5
    assert by_param[id(named["encoder.blocks.0.attn.qkv.weight"])]["lr_scale"] == 0.25
    assert by_param[id(named["encoder.patch_embed.proj.weight"])]["lr_scale"] == 0.125
    assert by_param[id(named["head.weight"])]["weight_decay"] == 0.05
    assert by_param[id(named["head.bias"])]["weight_decay"] == 0.0
    assert by_param[id(named["encoder.cls_token"])]["weight_decay"] == 0.0
    opt = torch.optim.AdamW(groups, lr=1.0)
    set_lr(opt, 1e-3)
    lrs = {g["layer_id"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({0: 1.25e-4, 1: 2.5e-4, 2: 5e-4, 3: 1e-3})


def test_label_smoothing_only_when_no_mixing():
    x = torch.randn(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    mixed, targets = mix_batch(x, y, 4, np.random.default_rng(0), smoothing=0.2)
    assert torch.equal(mixed, x)
    assert torch.allclose(targets, smooth_one_hot(y, 4, 0.2))
    assert targets[0].tolist() == pytest.approx([0.85, 0.05, 0.05, 0.05])


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixing_blends_images_and_targets_consistently(mode):
    x = torch.stack([torch.zeros(1, 10, 10), torch.ones(1, 10, 10)])
    y = torch.tensor([0, 1])
    kw = {"mixup_alpha": 1.0} if mode == "mixup" else {"cutmix_alpha": 1.0}
    mixed, targets = mix_batch(x, y, 2, np.random.default_rng(3), **kw)
    assert torch.allclose(targets.sum(1), torch.ones(2))
    # the share of image 1 in mixed image 0 equals the weight of class 1 in its target
    share = mixed[0].mean().item()
    assert share == pytest.approx(targets[0, 1].item(), abs=1e-6)
    assert 0 < share < 1
    if mode == "cutmix":
        assert set(mixed[0].unique().tolist()) == {0.0, 1.0}
    again = mix_batch(x, y, 2, np.random.default_rng(3), **kw)
    assert torch.equal(again[0], mixed) and torch.equal(again[1], targets)


def test_soft_cross_entropy_matches_hard_labels():
    logits = torch.randn(5, 3)
    y = torch.tensor([0, 2, 1, 1, 0])
    hard = torch.nn.functional.cross_entropy(logits, y)
    assert soft_cross_entropy(logits, smooth_one_hot(y, 3, 0.0)).item() == pytest.approx(
        hard.item(), rel=1e-6
    )
