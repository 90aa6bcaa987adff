"""timm layout: key names and shapes of timm's VisionTransformer, exact round trips, real load."""

import json

import pytest
import torch
from interop_helpers import random_checkpoint, randomise_, tiny_model_config
from safetensors.torch import load_file, save_file

from mimkit.errors import CheckpointError
from mimkit.interop.convert import export_checkpoint, import_checkpoint
from mimkit.interop.timm import mimkit_to_timm, timm_to_mimkit
from mimkit.models import ModelConfig, VisionTransformer, resolve_model_config
from mimkit.train.checkpoint import load_model


def timm_vit_tiny_patch16_224_keys() -> dict[str, tuple[int, ...]]:
    """timm.create_model('vit_tiny_patch16_224', num_classes=0, global_pool='token')
    .state_dict() names and shapes (timm 0.9-1.0; class token, no fc_norm, no head)."""
    d, hidden, tokens = 192, 768, 1 + 14 * 14
    keys = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, tokens, d),
        "patch_embed.proj.weight": (d, 3, 16, 16),
        "patch_embed.proj.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
    }
    for i in range(12):
        keys.update(
            {
                f"blocks.{i}.norm1.weight": (d,),
                f"blocks.{i}.norm1.bias": (d,),
                f"blocks.{i}.attn.qkv.weight": (3 * d, d),
                f"blocks.{i}.attn.qkv.bias": (3 * d,),
                f"blocks.{i}.attn.proj.weight": (d, d),
                f"blocks.{i}.attn.proj.bias": (d,),
                f"blocks.{i}.norm2.weight": (d,),
                f"blocks.{i}.norm2.bias": (d,),
                f"blocks.{i}.mlp.fc1.weight": (hidden, d),
                f"blocks.{i}.mlp.fc1.bias": (hidden,),
                f"blocks.{i}.mlp.fc2.weight": (d, hidden),
                f"blocks.{i}.mlp.fc2.bias": (d,),
            }
        )
    return keys


def test_export_matches_timm_vit_tiny_key_layout():
    encoder = VisionTransformer(resolve_model_config(ModelConfig(preset="vit_tiny")))
    exported = mimkit_to_timm({f"encoder.{k}": v for k, v in encoder.state_dict().items()})
    assert {k: tuple(v.shape) for k, v in exported.items()} == timm_vit_tiny_patch16_224_keys()


def test_round_trip_mimkit_timm_mimkit_is_exact(tmp_path):
    ours, cfg = random_checkpoint(tmp_path / "ck", img_size=[16, 24], qkv_bias=False)
    export_checkpoint(tmp_path / "ck", "timm", tmp_path / "timm")
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["model_args"]["img_size"] == [16, 24] and config["num_classes"] == 0
    result = import_checkpoint(tmp_path / "timm", tmp_path / "back")
    assert result.fmt == "timm" and not result.has_decoder
    back, back_cfg = load_model(tmp_path / "back")
    assert back_cfg.model.image_hw == (16, 24) and back_cfg.model.qkv_bias is False
    assert back_cfg.model.num_heads == cfg.model.num_heads  # from config.json's model_args
    a, b = ours.encoder.state_dict(), back.encoder.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_bare_timm_safetensors_file_imports(tmp_path):
    """A timm state dict alone: head dropped, heads taken from the preset of that width."""
    cfg = resolve_model_config(tiny_model_config(embed_dim=192, num_heads=3))
    encoder = randomise_(VisionTransformer(cfg))
    state = mimkit_to_timm(encoder.state_dict())
    state["head.weight"], state["head.bias"] = torch.zeros(10, 192), torch.zeros(10)
    save_file(state, tmp_path / "vit.safetensors")
    result = import_checkpoint(tmp_path / "vit.safetensors", tmp_path / "ours")
    assert result.fmt == "timm" and any("3 heads assumed" in n for n in result.notes)
    back, _ = load_model(tmp_path / "ours")
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back.encoder(images), encoder(images), atol=0, rtol=0)


def test_no_embed_class_table_gets_an_equivalent_zero_row():
    cfg = resolve_model_config(tiny_model_config())
    encoder = randomise_(VisionTransformer(cfg))
    with torch.no_grad():
        encoder.pos_embed[:, 0] = 0  # what a no_embed_class model computes for the cls token
    state = mimkit_to_timm(encoder.state_dict())
    state["pos_embed"] = state["pos_embed"][:, 1:]
    converted = timm_to_mimkit(state, "x")
    assert torch.equal(converted["encoder.pos_embed"], encoder.pos_embed)


def test_avg_pool_fc_norm_layout_is_refused():
    cfg = resolve_model_config(tiny_model_config())
    state = mimkit_to_timm(VisionTransformer(cfg).state_dict())
    state["fc_norm.weight"] = state.pop("norm.weight")
    with pytest.raises(CheckpointError, match="fc_norm"):
        timm_to_mimkit(state, "vit.safetensors")


def test_export_loads_into_real_timm_strict(tmp_path):
    timm = pytest.importorskip("timm")
    ours, cfg = random_checkpoint(tmp_path / "ck")
    export_checkpoint(tmp_path / "ck", "timm", tmp_path / "timm")
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    model = timm.create_model(config["architecture"], pretrained=False, **config["model_args"])
    model.load_state_dict(load_file(tmp_path / "timm" / "model.safetensors"), strict=True)
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward_features(images.float()), ours.encoder(images), atol=1e-5, rtol=1e-5
        )
