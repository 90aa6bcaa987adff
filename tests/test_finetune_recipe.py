"""Fine-tuning's own recipe: its augmentation, MAE's head, a trained position table, defaults
sized to the images and the run, and `--recipe mae`."""

import math

import pytest
import torch
from eval_helpers import make_learnable_idx, save_tiny_checkpoint

from mimkit.errors import ConfigError
from mimkit.eval.augment import rand_augment, random_erasing
from mimkit.eval.finetune import (
    FinetuneConfig,
    ViTClassifier,
    auto_batch_size,
    build_classifier,
    finetune,
    resize_to,
    resolve_recipe,
    split_settings,
)
from mimkit.eval.head_init import fit_linear_head, probe_initialised_head
from mimkit.models.config import ModelConfig, resolve_model_config
from mimkit.models.vit import VisionTransformer
from mimkit.train.checkpoint import load_config_file, read_weights


def tiny_encoder(pool="avg"):
    cfg = ModelConfig(img_size=16, in_chans=1, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                      pool=pool)  # fmt: skip
    return VisionTransformer(resolve_model_config(cfg))


def test_small_images_get_no_crop_and_short_runs_no_long_run_regularisers():
    train, ft = split_settings({})
    small = resolve_recipe(ft, train, side=28, pretrained=True, hflip=True)
    assert small.crop_scale == [1.0, 1.0] and small.test_crop == 1.0
    assert small.layer_decay == 0.75 and small.drop_path == 0.0
    assert small.randaug_ops == 0 and small.erase_prob == 0.0
    scratch = resolve_recipe(ft, train, side=28, pretrained=False, hflip=True)
    assert scratch.layer_decay == 1.0  # layer decay keeps nothing worth keeping from random init
    big = resolve_recipe(ft, split_settings({"epochs": 100})[0], 224, True, hflip=True)
    assert big.crop_scale == [0.08, 1.0] and big.test_crop == pytest.approx(224 / 256)
    assert big.randaug_ops == 2 and big.erase_prob == 0.25 and big.drop_path == 0.1
    # a long run on small images keeps them off too: they left a 16-token ViT underfit at 28 px
    long_small = resolve_recipe(ft, split_settings({"epochs": 100})[0], 28, True, hflip=True)
    assert (long_small.randaug_ops, long_small.erase_prob, long_small.drop_path) == (0, 0.0, 0.0)
    given = resolve_recipe(split_settings({"randaug_ops": 1})[1], train, 28, True, hflip=True)
    assert given.randaug_ops == 1  # a flag given still wins


def test_recipe_mae_is_main_finetune_defaults_and_given_flags_still_win():
    train, ft = split_settings({"recipe": "mae"})
    assert (train.epochs, train.batch_size, train.base_lr, train.warmup_epochs) == (50, 64, 1e-3, 5)
    assert (train.min_lr, train.weight_decay) == (1e-6, 0.05)
    mae = resolve_recipe(ft, train, side=28, pretrained=True, hflip=False)
    assert mae.crop_scale == [0.08, 1.0] and mae.hflip is True
    assert (mae.randaug_ops, mae.randaug_magnitude, mae.erase_prob) == (2, 9.0, 0.25)
    assert (mae.layer_decay, mae.drop_path, mae.label_smoothing) == (0.75, 0.1, 0.1)
    assert mae.test_crop == pytest.approx(224 / 256) and mae.head == "fc_norm"
    train, ft = split_settings({"recipe": "mae", "epochs": 3, "erase_prob": 0.0})
    mine = resolve_recipe(ft, train, side=28, pretrained=True, hflip=True)
    assert train.epochs == 3 and mine.erase_prob == 0.0


def test_batch_size_follows_the_dataset_size():
    assert auto_batch_size(10_000) == 64 and auto_batch_size(60_000) == 128
    assert auto_batch_size(1_400) == 16


def test_fc_norm_head_normalises_the_mean_of_pre_norm_patch_tokens():
    encoder = tiny_encoder()
    blocks_out = None

    def keep(module, args, out):
        nonlocal blocks_out
        blocks_out = out

    encoder.blocks[-1].register_forward_hook(keep)
    model = ViTClassifier(encoder, 3, head="fc_norm")
    assert isinstance(model.encoder.norm, torch.nn.Identity)
    x = torch.randn(2, 1, 16, 16)
    pooled = model.pooled(x)
    expected = model.fc_norm(blocks_out[:, 1:].mean(dim=1))
    assert torch.allclose(pooled, expected, atol=1e-6)


def test_the_position_table_is_trained_in_fine_tuning():
    base = tiny_encoder().cfg
    model = build_classifier(base, None, 3, FinetuneConfig(drop_path=0.0))
    table = model.encoder.pos_embed
    assert isinstance(table, torch.nn.Parameter)
    model(torch.randn(2, 1, 16, 16)).sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0
    assert "pos_embed" in model.encoder.no_weight_decay()


def test_rand_augment_is_seeded_stays_in_range_and_changes_images():
    x = torch.rand(16, 1, 12, 12)
    a = rand_augment(x, generator=torch.Generator().manual_seed(0))
    b = rand_augment(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= -1e-6 and a.max() <= 1 + 1e-6
    assert not torch.allclose(a, x)
    assert torch.equal(rand_augment(x, num_ops=0), x)


def test_random_erasing_fills_one_rectangle_with_noise():
    x = torch.zeros(8, 1, 20, 20)
    erased = random_erasing(x, prob=1.0, generator=torch.Generator().manual_seed(0))
    for image in erased[:, 0]:
        rows, cols = (image != 0).nonzero(as_tuple=True)
        area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert len(rows) == area  # one filled rectangle
        assert 0.02 * 400 * 0.5 <= area <= 400 / 3 * 1.5
    assert torch.equal(random_erasing(x, prob=0.0), x)


def test_test_time_crop_resizes_up_then_takes_the_centre():
    x = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28)
    out = resize_to(x, (28, 28), crop=0.875)
    assert out.shape == (1, 1, 28, 28)
    big = resize_to(x, (math.floor(28 / 0.875),) * 2)
    assert torch.equal(out, big[..., 2:30, 2:30])


def test_fine_tuning_uses_its_own_crop_not_the_checkpoints(tmp_path):
    # bug: the classifier inherited the pretraining crop (0.35-1) of the checkpoint
    data = make_learnable_idx(tmp_path / "idx", n_train=32, n_test=16)
    folder, cfg, _ = save_tiny_checkpoint(tmp_path, data)
    assert cfg.data.crop_scale == [0.35, 1.0]
    train, ft = split_settings({"epochs": 1, "batch_size": 16, "max_steps": 1, "progress": False})
    result = finetune(load_config_file(folder), read_weights(folder / "model.safetensors"), train,
                      ft, tmp_path / "ft")  # fmt: skip
    assert load_config_file(result.checkpoint).data.crop_scale == [1.0, 1.0]
    assert 0.0 <= result.train_top1 <= 1.0 and result.settings["head"] == "fc_norm"


def test_probe_batch_and_epochs_follow_the_dataset_size():
    from mimkit.eval.linear import probe_settings_for

    small = probe_settings_for(1_400)
    assert small.batch_size == 128 and small.epochs * (1_400 // 128) >= 1000
    big = probe_settings_for(60_000)
    assert big.batch_size == 1024 and big.epochs == 40


def test_probe_warns_when_the_chosen_lr_is_on_the_grid_edge(caplog):
    import logging

    from eval_helpers import clustered_features

    from mimkit.eval.linear import ProbeSettings, linear_probe

    train = clustered_features(seed=0)
    test = clustered_features(seed=1)
    with caplog.at_level(logging.WARNING, logger="mimkit"):
        result = linear_probe(*train, *test, lrs=[1e-4, 2e-4], settings=ProbeSettings(epochs=2))
    assert result.lr_at_grid_edge and "edge of the grid" in caplog.text


def test_head_fit_separates_separable_features():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(90) % 3
    centres = torch.randn(3, 8, generator=gen) * 4
    features = centres[labels] + 0.3 * torch.randn(90, 8, generator=gen)
    weight, bias = fit_linear_head(features, labels, 3)
    assert ((features @ weight.T + bias).argmax(1) == labels).all()
    again = fit_linear_head(features, labels, 3)
    assert torch.equal(weight, again[0]) and torch.equal(bias, again[1])  # no randomness


@pytest.mark.parametrize("distill_head", [False, True])
def test_probe_initialised_head_predicts_as_the_probe_it_reports(distill_head):
    # LP-FT: the classifier's own forward pass must give the probe's accuracy; MAE's
    # near-zero head (the old start) predicts one class almost everywhere. With G2SD's
    # distillation head, both heads start as the probe, so their average is the probe too
    torch.manual_seed(0)
    model = ViTClassifier(tiny_encoder(), num_classes=2, head="fc_norm", distill_head=distill_head)
    images = torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8)
    images[32:, :, :8] = 255  # class 1: bright top half, easy for any features
    labels = (torch.arange(64) >= 32).long()

    def prepare(batch):
        return (batch.float() / 255 - 0.5) / 0.25

    fit = probe_initialised_head(model, images, labels, prepare, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        own = (model(prepare(images)).argmax(1) == labels).float().mean().item()
    assert fit == pytest.approx(own) and fit > 0.9
    if distill_head:
        assert torch.equal(model.dist_head.weight, model.head.weight)


def test_head_init_defaults_to_probe_and_recipe_mae_keeps_the_near_zero_head(tmp_path):
    train, ft = split_settings({})
    assert resolve_recipe(ft, train, side=28, pretrained=True, hflip=True).head_init == "probe"
    train, ft = split_settings({"recipe": "mae"})
    assert resolve_recipe(ft, train, side=28, pretrained=True, hflip=True).head_init == "zero"
    with pytest.raises(ConfigError, match="head_init"):
        FinetuneConfig(head_init="linear").check()
    data = make_learnable_idx(tmp_path / "idx", n_train=32, n_test=16)
    folder, _, _ = save_tiny_checkpoint(tmp_path, data)
    results = {}
    for init in ("probe", "zero"):
        train, ft = split_settings({"epochs": 1, "batch_size": 16, "max_steps": 1, "base_lr": 1e-12,
                                    "progress": False, "head_init": init})  # fmt: skip
        result = finetune(load_config_file(folder), read_weights(folder / "model.safetensors"),
                          train, ft, tmp_path / f"ft_{init}")  # fmt: skip
        results[init] = result
        assert result.settings["head_init"] == init
    # one step at lr ~0: what differs is only where the head starts
    assert results["probe"].train_top1 > results["zero"].train_top1


def test_head_fit_is_the_same_on_any_number_of_threads():
    # a torchrun of two (one thread each) must start from the single process's head; before
    # the fit ran on one thread, 1 and 2 threads gave heads 2.5e-4 apart here
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (4000,), generator=gen)
    features = (
        torch.randn(4000, 48, generator=gen) + 0.5 * torch.randn(10, 48, generator=gen)[labels]
    )
    threads = torch.get_num_threads()
    try:
        fits = []
        for count in (1, 2):
            torch.set_num_threads(count)
            fits.append(fit_linear_head(features, labels, 10))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(fits[0][0], fits[1][0]) and torch.equal(fits[0][1], fits[1][1])
