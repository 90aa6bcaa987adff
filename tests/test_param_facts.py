"""The model owns the facts about its parameters (timm's): which skip weight decay, the layer
of each for layer-wise lr decay, how many prefix tokens come before the patches; the optimiser
pieces ask the model instead of keeping name lists of their own."""

import pytest
import torch
from conftest import tiny_method_parts, tiny_model_config

from mimkit.eval.finetune import ViTClassifier
from mimkit.models.config import resolve_model_config
from mimkit.models.vit import VisionTransformer
from mimkit.objectives import build_method
from mimkit.train.optim import layer_decay_param_groups, no_weight_decay_names, param_groups

# The rule the optimiser kept before the model owned these facts; the groups must not change.
OLD_NO_DECAY_NAMES = ("cls_token", "pos_embed", "mask_token", "dist_token")


def old_rule_decays(name, param):
    no_decay = param.ndim <= 1 or name.endswith(".bias")
    return not (no_decay or name.split(".")[-1] in OLD_NO_DECAY_NAMES)


def encoder(**kw):
    return VisionTransformer(resolve_model_config(tiny_model_config(**kw)))


def test_encoder_names_its_tokens_and_its_layers():
    assert encoder().no_weight_decay() == {"cls_token"}
    assert encoder(cls_token=False, pool="avg").no_weight_decay() == set()
    assert encoder().num_prefix_tokens == 1
    assert encoder(cls_token=False, pool="avg").num_prefix_tokens == 0
    vit = encoder(depth=3)
    ids = {name: vit.layer_id(name) for name, _ in vit.named_parameters()}
    assert ids["patch_embed.proj.weight"] == ids["cls_token"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.2.mlp.fc2.bias"] == 3
    assert ids["norm.weight"] == 4


@pytest.mark.parametrize(
    "method",
    [
        "mae",
        "crossmae",
        "maskfeat",
        "mfm",
        "g2sd",
        "simmim",
    ],
)
def test_weight_decay_groups_are_the_same_as_by_the_old_name_rule(method, tmp_path):
    # g2sd is built without its teacher when the checkpoint is absent and teacher_dim given
    teacher = dict(teacher=str(tmp_path / "absent"), teacher_dim=16) if method == "g2sd" else {}
    model = build_method(*tiny_method_parts(method=method, **teacher))
    decay, no_decay = param_groups(model, 0.05)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    expected = {id(p) for n, p in named if old_rule_decays(n, p)}
    assert {id(p) for p in decay["params"]} == expected
    assert {id(p) for p in no_decay["params"]} == {id(p) for _, p in named} - expected
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_no_decay_names_are_full_names_wherever_the_module_sits():
    model = build_method(*tiny_method_parts(method="mae"))
    assert no_weight_decay_names(model) == {"encoder.cls_token", "decoder.mask_token"}
    assert no_weight_decay_names(model.encoder) == {"cls_token"}


def test_layer_decay_asks_the_encoder_wherever_it_sits():
    classifier = ViTClassifier(encoder(depth=3), 10)
    groups = layer_decay_param_groups(classifier, 0.05, 0.5)  # depth read from the encoder
    layer_of = {id(p): g["layer_id"] for g in groups for p in g["params"]}
    for name, param in classifier.named_parameters():
        if name.startswith("encoder."):
            assert layer_of[id(param)] == classifier.encoder.layer_id(name[len("encoder.") :])
        else:
            assert layer_of[id(param)] == 4, name
    alone = layer_decay_param_groups(classifier.encoder, 0.05, 0.5, num_blocks=3)
    assert {g["layer_id"] for g in alone} == {0, 1, 2, 3, 4}
    with pytest.raises(ValueError, match="depth 3"):
        layer_decay_param_groups(classifier, 0.05, 0.5, num_blocks=12)


def test_layer_decay_groups_are_the_same_as_by_the_old_name_rule():
    torch.manual_seed(0)
    classifier = ViTClassifier(encoder(depth=2), 10, distill_head=True)
    groups = layer_decay_param_groups(classifier, 0.05, 0.75, num_blocks=2)
    for g in groups:
        for p in g["params"]:
            name = next(n for n, q in classifier.named_parameters() if q is p)
            assert (g["weight_decay"] == 0.05) == old_rule_decays(name, p), name
            assert g["lr_scale"] == 0.75 ** (3 - g["layer_id"])
