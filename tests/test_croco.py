"""CroCo: the reference view reaches the prediction only through cross-attention, the loss
covers the masked view's hidden patches only, and the preset runs the whole CLI cycle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mimkit.cli.main import main
from mimkit.config import load_config
from mimkit.errors import ConfigError
from mimkit.masking import MaskingConfig
from mimkit.models.config import ModelConfig, resolve_model_config
from mimkit.objectives import build_method
from mimkit.objectives.croco import CroCo, CroCoSettings, overlapping_crops
from mimkit.train.checkpoint import load_model

PRESET = "configs/fmnist_croco_tiny.yaml"


def tiny_croco(**settings) -> CroCo:
    torch.manual_seed(0)
    cfg = resolve_model_config(
        ModelConfig(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2,
                    decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2)
    )  # fmt: skip
    return CroCo(cfg, MaskingConfig(ratio=0.75), CroCoSettings(**settings)).eval()


def pair(seed: int = 0, batch: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(batch, 1, 16, 16, generator=gen) for k in ("view1", "view2")}


def test_reference_view_reaches_the_prediction_only_through_cross_attention():
    model = tiny_croco()
    mask = model.draw_mask(3, "cpu", torch.Generator().manual_seed(1))
    views, other = pair(0), pair(1)
    changed = {"view1": views["view1"], "view2": other["view2"]}
    with torch.no_grad():
        base = model(views, mask=mask).pred
        assert not torch.allclose(base, model(changed, mask=mask).pred)  # view2 matters...
        for block in model.decoder.blocks:  # ...until the cross-attention path is cut
            block.cross.proj.weight.zero_()
            block.cross.proj.bias.zero_()
        cut = model(views, mask=mask).pred
        torch.testing.assert_close(cut, model(changed, mask=mask).pred, rtol=0, atol=0)
        # and the masked view still drives the prediction (nothing else was cut)
        moved = {"view1": other["view1"], "view2": views["view2"]}
        assert not torch.allclose(cut, model(moved, mask=mask).pred)


def test_reference_gradient_flows_only_into_cross_attention_keys_and_values():
    model = tiny_croco().train()
    views = pair(0)
    reference = model.encoder(views["view2"]).detach().requires_grad_(True)
    mask = model.draw_mask(3, "cpu", torch.Generator().manual_seed(1))
    latent = model.encoder(views["view1"], mask.ids_keep)
    seen = []
    hooks = [
        block.cross.norm_kv.register_forward_hook(lambda m, i, o: seen.append(i[0]))
        for block in model.decoder.blocks
    ]
    pred = model.decoder(latent, mask.ids_restore, reference)
    for hook in hooks:
        hook.remove()
    # every block's keys and values come from the reference tokens, unchanged by any block
    memory = model.decoder.embed(reference) + model.decoder.pos_embed
    assert len(seen) == len(model.decoder.blocks)
    assert all(torch.equal(m, memory) for m in seen)
    (grad,) = torch.autograd.grad(pred.sum(), reference)
    assert grad.abs().sum() > 0


def test_loss_counts_only_the_hidden_patches_of_the_masked_view():
    model = tiny_croco().train()
    views = pair(2)
    mask = model.draw_mask(3, "cpu", torch.Generator().manual_seed(3))
    out = model(views, mask=mask)
    (grad,) = torch.autograd.grad(out.loss, out.pred)
    per_patch = grad.abs().sum(-1)  # (B, N)
    hidden = mask.binary.bool()
    assert (per_patch[~hidden] == 0).all() and (per_patch[hidden] > 0).all()
    # the target is the masked view's normalised pixels, not the reference view's
    target = model.target(views["view1"])
    expected = (((out.pred - target) ** 2).mean(-1) * mask.binary).sum() / mask.binary.sum()
    torch.testing.assert_close(out.loss, expected)


def test_single_images_become_two_overlapping_crops_with_their_offset():
    ramp = torch.linspace(0, 1, 32)
    images = (ramp[None, :] + 10 * ramp[:, None]).expand(4, 1, 32, 32).contiguous()
    view1, view2, offset = overlapping_crops(images, 0.25, torch.Generator().manual_seed(0))
    assert view1.shape == view2.shape == images.shape
    assert (offset.abs() <= 0.25).all() and offset.shape == (4, 2)
    # on a ramp rising 1/31 per pixel (10/31 per row), a crop moved by (dy, dx) of the side
    # (32 px) differs everywhere by the same amount: the offset, in pixel values
    for i in range(4):
        dy, dx = offset[i].tolist()
        torch.testing.assert_close(
            view2[i] - view1[i],
            torch.full_like(view1[i], (dx + 10 * dy) * 32 / 31),
            atol=1e-4,
            rtol=0,
        )
    model = tiny_croco()
    out = model(torch.randn(2, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)


def test_settings_and_inputs_are_checked():
    cfg = resolve_model_config(ModelConfig(img_size=16, patch_size=4, in_chans=1))
    with pytest.raises(ConfigError, match="masked_view and method.reference_view must differ"):
        CroCoSettings(masked_view="a", reference_view="a").check(cfg)
    with pytest.raises(ConfigError, match="method.pair_shift"):
        CroCoSettings(pair_shift=1.0).check(cfg)
    model = tiny_croco()
    with pytest.raises(ConfigError, match=r"inputs \['image', 'view1'\], not \['view2'\]"):
        model({"view1": torch.zeros(1, 1, 16, 16), "image": torch.zeros(1, 1, 16, 16)})
    method = build_method(cfg, MaskingConfig(ratio=0.9), CroCoSettings())
    assert isinstance(method, CroCo)


def _pairs_folder(root, n_train=16, n_test=8, size=16):
    """root/{train,test}/{view1,view2}/CLASS/p_K.png: two noisy shifted views per sample."""
    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("test", n_test)):
        for k in range(count):
            label = k % 2
            scene = rng.integers(0, 60, (size + 4, size + 4)).astype(np.uint8)
            scene[4:12, 4 + 4 * label : 8 + 4 * label] = 220  # the class: where the bar is
            for view, (y, x) in (("view1", (0, 0)), ("view2", (2, 3))):
                path = root / split / view / f"{label}" / f"p_{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(scene[y : y + size, x : x + size], mode="L").save(path)
    return root


def test_preset_trains_reloads_evaluates_and_exports_through_the_cli(tmp_path, capsys):
    data = _pairs_folder(tmp_path / "pairs")
    out = tmp_path / "run"
    tiny = [
        "model.img_size=16", "model.patch_size=4", "model.embed_dim=32", "model.depth=2",
        "model.num_heads=2", "model.decoder_embed_dim=16", "model.decoder_depth=1",
        "model.decoder_num_heads=2", f"data.path={data}", "train.batch_size=8",
        "train.epochs=1", "train.max_steps=2", "train.progress=false", f"out_dir={out}",
        "eval.knn_k=3", "eval.compare_random_init=false",
    ]  # fmt: skip
    cfg = load_config(PRESET, tiny)
    assert cfg.method.name == "croco" and cfg.masking.ratio == 0.9
    assert cfg.data.source == "multi" and set(cfg.data.inputs) == {"view1", "view2"}
    assert main(["pretrain", PRESET, *tiny]) == 0
    printed = capsys.readouterr().out
    assert "kNN top-1 pretrained" in printed
    model, saved = load_model(out / "checkpoint")
    assert isinstance(model, CroCo) and saved.data.inputs == cfg.data.inputs
    assert main(["eval", "knn", str(out), "-k", "3"]) == 0
    knn = json.loads((out / "eval" / "eval_knn_k-3.json").read_text())
    assert 0.0 <= knn["top1"] <= 1.0
    assert main(["export", str(out), "--to", "timm", str(tmp_path / "timm")]) == 0
    assert any((tmp_path / "timm").iterdir())
