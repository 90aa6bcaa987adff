"""Parity with Hugging Face transformers' ViTMAE / ViT, both directions, and exact round trips."""

import json
from dataclasses import replace

import pytest
import torch

transformers = pytest.importorskip("transformers")
from interop_helpers import (  # noqa: E402
    random_checkpoint,
    randomise_,
    tiny_method_parts,
    tiny_model_config,
)

from mimkit.errors import CheckpointError  # noqa: E402
from mimkit.interop.convert import export_checkpoint, import_checkpoint  # noqa: E402
from mimkit.interop.hf import (  # noqa: E402
    hf_config_to_mae,
    hf_config_to_model_config,
    hf_state_to_mimkit,
    model_config_to_hf_config,
)
from mimkit.masking import mask_from_noise  # noqa: E402
from mimkit.objectives.mae import build_mae  # noqa: E402
from mimkit.train.checkpoint import load_model  # noqa: E402

SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    image_size=16,
    patch_size=4,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=64,
)
TOL = dict(atol=1e-5, rtol=1e-5)


def random_hf_mae(**kw):
    torch.manual_seed(0)
    config = transformers.ViTMAEConfig(**kw)
    return randomise_(transformers.ViTMAEForPreTraining(config)).eval()


def assert_same_outputs(hf_model, ours, batch=2, seed=1):
    """Same images and masking noise: loss, reconstructions and every encoder hidden state."""
    cfg = ours.cfg
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, cfg.in_chans, *cfg.image_hw, generator=g)
    noise = torch.rand(batch, cfg.num_patches, generator=g)
    with torch.no_grad():
        theirs = hf_model(images, noise=noise, output_hidden_states=True)
        mine = ours(images, mask=mask_from_noise(noise, ours.masking.ratio))
        latent, hidden = ours.encoder(images, mine.mask.ids_keep, return_hidden=True)
        their_latent = hf_model.vit(images, noise=noise).last_hidden_state
    torch.testing.assert_close(mine.mask.binary, theirs.mask, atol=0, rtol=0)
    torch.testing.assert_close(mine.loss, theirs.loss, **TOL)
    torch.testing.assert_close(mine.pred, theirs.logits, **TOL)
    assert len(hidden) == len(theirs.hidden_states) == cfg.depth + 1
    for a, b in zip(hidden, theirs.hidden_states, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(latent, their_latent, **TOL)


def hf_to_mimkit(hf_model):
    hf = hf_model.config.to_dict()
    cfg, has_decoder = hf_config_to_model_config(hf, "test")
    assert has_decoder
    ours = build_mae(cfg, *hf_config_to_mae(hf)).eval()
    ours.load_state_dict(hf_state_to_mimkit(hf_model.state_dict(), "test"))
    return ours


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"norm_pix_loss": True},
        {"qkv_bias": False, "layer_norm_eps": 1e-5, "mask_ratio": 0.5},
    ],
)
def test_hf_to_mimkit_parity_small(extra):
    hf_model = random_hf_mae(**SMALL, **extra)
    ours = hf_to_mimkit(hf_model)
    assert ours.cfg.layer_norm_eps == extra.get("layer_norm_eps", 1e-12)
    assert ours.settings.norm_pix_loss == extra.get("norm_pix_loss", False)
    assert_same_outputs(hf_model, ours)


@pytest.mark.slow
def test_hf_to_mimkit_parity_vit_mae_base_shapes():
    hf_model = random_hf_mae(norm_pix_loss=True)  # facebook/vit-mae-base: 768 x 12, decoder 512 x 8
    ours = hf_to_mimkit(hf_model)
    assert (ours.cfg.embed_dim, ours.cfg.depth, ours.cfg.decoder_depth) == (768, 12, 8)
    assert_same_outputs(hf_model, ours, batch=1)


def test_mimkit_to_hf_parity_through_from_pretrained(tmp_path):
    ours, _ = random_checkpoint(tmp_path / "ck", layer_norm_eps=1e-6, norm_pix_loss=True)
    export_checkpoint(tmp_path / "ck", "hf", tmp_path / "hf")
    hf_model, info = transformers.ViTMAEForPreTraining.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert hf_model.config.layer_norm_eps == 1e-6 and hf_model.config.norm_pix_loss
    assert_same_outputs(hf_model.eval(), ours)


def test_export_loads_as_hf_encoder_models(tmp_path):
    ours, _ = random_checkpoint(tmp_path / "ck")
    images = torch.randn(2, 3, 16, 16)
    expected = ours.encoder(images)
    export_checkpoint(tmp_path / "ck", "hf", tmp_path / "hf_vit", hf_arch="vit")
    vit, info = transformers.ViTModel.from_pretrained(
        tmp_path / "hf_vit", add_pooling_layer=False, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(vit(images).last_hidden_state, expected, **TOL)
    processor = json.loads((tmp_path / "hf_vit" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 16, "width": 16}


def test_round_trip_mimkit_hf_mimkit_is_exact(tmp_path):
    ours, cfg = random_checkpoint(tmp_path / "ck", layer_norm_eps=1e-6, qkv_bias=False)
    export_checkpoint(tmp_path / "ck", "hf", tmp_path / "hf")
    result = import_checkpoint(tmp_path / "hf", tmp_path / "back")
    assert result.fmt == "hf" and result.has_decoder
    back, back_cfg = load_model(tmp_path / "back")
    # every field survives; `preset` only names where unset fields came from, and all are set
    assert replace(back_cfg.model, preset=cfg.model.preset) == cfg.model
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_save_pretrained_folder_imports_with_parity(tmp_path):
    """What transformers itself writes (Hub names, 5.x decoder spelling) imports exactly."""
    hf_model = random_hf_mae(**SMALL, norm_pix_loss=True)
    hf_model.save_pretrained(tmp_path / "hf")
    import_checkpoint(tmp_path / "hf", tmp_path / "ours")
    ours, run = load_model(tmp_path / "ours")
    assert run.model.layer_norm_eps == 1e-12
    assert run.data.mean == [0.485, 0.456, 0.406]  # no preprocessor file: ImageNet assumed
    assert_same_outputs(hf_model, ours)


def test_vit_model_folder_imports_as_encoder(tmp_path):
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=96,
        image_size=[16, 24],
        patch_size=4,
        num_channels=1,
    )
    vit = randomise_(transformers.ViTModel(config)).eval()  # with a pooler: dropped on import
    vit.save_pretrained(tmp_path / "vit")
    result = import_checkpoint(tmp_path / "vit", tmp_path / "ours")
    assert not result.has_decoder
    source = json.loads((tmp_path / "ours" / "source.json").read_text())
    assert source["decoder"].startswith("freshly initialised")
    ours, run = load_model(tmp_path / "ours")
    assert run.model.image_hw == (16, 24) and run.model.mlp_ratio == 3.0
    images = torch.randn(2, 1, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(ours.encoder(images), vit(images).last_hidden_state, **TOL)


def test_config_maps_both_ways():
    model = build_mae(
        *tiny_method_parts(layer_norm_eps=1e-12, qkv_bias=False, norm_pix_loss=True, in_chans=1)
    )
    cfg = model.cfg
    hf = model_config_to_hf_config(cfg, masking=model.masking, settings=model.settings)
    assert hf["layer_norm_eps"] == 1e-12 and hf["qkv_bias"] is False and hf["num_channels"] == 1
    back, has_decoder = hf_config_to_model_config(hf, "test")
    assert has_decoder and replace(back, preset=cfg.preset) == cfg


def test_unsupported_hf_configs_are_refused():
    hf = model_config_to_hf_config(build_mae(tiny_model_config()).cfg)
    with pytest.raises(CheckpointError, match="hidden_act"):
        hf_config_to_model_config(dict(hf, hidden_act="relu"), "cfg.json")
    with pytest.raises(CheckpointError, match="decoder MLP ratio"):
        hf_config_to_model_config(dict(hf, decoder_intermediate_size=40), "cfg.json")
    with pytest.raises(CheckpointError, match="model_type"):
        hf_config_to_model_config(dict(hf, model_type="bert"), "cfg.json")


def test_unknown_hf_weights_are_refused():
    state = hf_to_mimkit_state = random_hf_mae(**SMALL).state_dict()
    state["vit.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="no mimkit counterpart"):
        hf_state_to_mimkit(hf_to_mimkit_state, "weights.safetensors")


@pytest.mark.slow
def test_mimkit_to_hf_parity_vit_mae_base_shapes(tmp_path):
    from mimkit.models import ModelConfig

    ours, _ = random_checkpoint(
        tmp_path / "ck",
        **{f: getattr(ModelConfig(preset="vit_base"), f) for f in ("preset",)},
        img_size=224,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
    )
    export_checkpoint(tmp_path / "ck", "hf", tmp_path / "hf")
    hf_model, info = transformers.ViTMAEForPreTraining.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_same_outputs(hf_model.eval(), ours, batch=1)


def test_export_loads_as_vit_mae_model_without_masking(tmp_path):
    ours, _ = random_checkpoint(tmp_path / "ck")
    export_checkpoint(tmp_path / "ck", "hf", tmp_path / "hf")
    encoder, info = transformers.ViTMAEModel.from_pretrained(
        tmp_path / "hf", mask_ratio=0.0, output_loading_info=True
    )
    assert not info["missing_keys"]
    images = torch.randn(2, 3, 16, 16)
    in_order = torch.arange(16.0).expand(2, -1)  # keep every patch, in patch order
    with torch.no_grad():
        theirs = encoder.eval()(images, noise=in_order).last_hidden_state
        torch.testing.assert_close(theirs, ours.encoder(images), **TOL)


def test_sharded_save_pretrained_folder_imports(tmp_path):
    hf_model = random_hf_mae(**SMALL)
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    import_checkpoint(tmp_path / "hf", tmp_path / "ours")
    ours, _ = load_model(tmp_path / "ours")
    assert_same_outputs(hf_model, ours)


def test_non_square_export_to_vit_mae_is_refused(tmp_path):
    random_checkpoint(tmp_path / "ck", img_size=[16, 24])
    with pytest.raises(CheckpointError, match="square"):
        export_checkpoint(tmp_path / "ck", "hf", tmp_path / "hf")
    export_checkpoint(tmp_path / "ck", "hf", tmp_path / "vit", hf_arch="vit")  # encoder: fine
    assert (tmp_path / "vit" / "model.safetensors").is_file()


def test_hf_weights_without_their_folder_are_pointed_to_it(tmp_path):
    hf_model = random_hf_mae(**SMALL)
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="Hugging Face weights"):
        import_checkpoint(tmp_path / "pytorch_model.bin", tmp_path / "out")
