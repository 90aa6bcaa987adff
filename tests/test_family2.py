"""iBOT, HPM, CAE and MR-MAE (issue 20): the contract, the presets, and each defining property."""

import pytest
import torch
from conftest import tiny_model_overrides
from test_method_presets import short_run
from torch import nn

from mimkit.config import load_config
from mimkit.errors import ConfigError
from mimkit.masking import Mask, mask_from_noise, take_tokens
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.base import EMATeacher, MethodOutput, update_teachers
from mimkit.objectives.cae import ContextAutoencoder
from mimkit.objectives.droppos import DropPos, smoothing_map
from mimkit.objectives.hpm import HardPatchesMining, hardest_hidden, ranking_loss
from mimkit.objectives.ibot import IBOT, crossed_cls_loss, distillation_ce, masked_patch_loss
from mimkit.objectives.mrmae import MimicReconstructMAE
from mimkit.train.checkpoint import load_model, method_from_config

PRESETS = {
    "ibot": ("configs/fmnist_ibot_tiny.yaml", IBOT),
    "hpm": ("configs/fmnist_hpm_tiny.yaml", HardPatchesMining),
    "cae": ("configs/fmnist_cae_tiny.yaml", ContextAutoencoder),
    "mrmae": ("configs/fmnist_mrmae_tiny.yaml", MimicReconstructMAE),
    "droppos": ("configs/fmnist_droppos_tiny.yaml", DropPos),
}


def tiny(name, *overrides):
    return load_config(PRESETS[name][0], tiny_model_overrides("runs/unused") + list(overrides))


def build(name, *overrides):
    """The method of a preset at the tests' tiny size; MR-MAE gets a fresh tiny teacher."""
    torch.manual_seed(0)
    cfg = tiny(name, *overrides)
    if name != "mrmae":
        return method_from_config(cfg).train()
    teacher = VisionTransformer(cfg.model)
    return MimicReconstructMAE(cfg.model, cfg.masking, cfg.method, teacher).train()


def images(n=4, seed=0):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_new_methods_keep_the_contract(name):
    model = build(name)
    x = images()
    assert type(model).__bases__ == (nn.Module,)
    mask = model.draw_mask(4, "cpu", torch.Generator().manual_seed(0)).select(slice(1, 3))
    out = model(x[1:3], mask=mask)
    assert isinstance(out, MethodOutput) and out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert isinstance(model(x[1:3], generator=torch.Generator().manual_seed(0)), MethodOutput)
    assert model.encode(x).shape == (4, 32)
    with pytest.raises(ConfigError, match="not offered|no image"):
        model.reconstruct(x, mask)


@pytest.mark.parametrize("name", ["ibot", "hpm", "cae", "droppos"])
def test_new_presets_train_reload_and_export(tmp_path, name):
    from mimkit.interop.convert import export_checkpoint

    result = short_run(tmp_path, PRESETS[name][0], "run")
    assert type(result.model) is PRESETS[name][1] and result.steps == 2
    assert torch.isfinite(torch.tensor(result.final_loss))
    trained = result.model
    if hasattr(trained, "progress"):  # the loop told the method how far training is
        assert trained.progress() == pytest.approx(2 / 4)  # 2 of 1 epoch x 4 steps
    if hasattr(trained, "ema_encoder"):  # and moved its EMA copy, which is not the student
        pairs = zip(trained.ema_encoder.parameters(), trained.encoder.parameters(), strict=True)
        assert any(not torch.equal(t, s) for t, s in pairs)
    model, cfg = load_model(result.checkpoint)
    assert type(model) is PRESETS[name][1] and cfg.method == result.cfg.method
    saved = result.model.state_dict()
    assert all(torch.equal(saved[k].cpu(), v) for k, v in model.state_dict().items())
    assert model.encode(images(2)).shape == (2, 32)
    out = export_checkpoint(result.checkpoint, "timm", tmp_path / "timm")
    assert out.exists()


def test_mrmae_preset_trains_from_a_teacher_and_reloads_without_it(tmp_path):
    teacher = short_run(tmp_path, "configs/fmnist_mae_tiny.yaml", "teacher")
    result = short_run(
        tmp_path, PRESETS["mrmae"][0], "student", f"method.teacher={teacher.checkpoint}"
    )
    assert type(result.model) is MimicReconstructMAE and result.cfg.method.teacher_dim == 32
    assert not any(k.startswith("teacher.") for k in result.model.state_dict())
    reference = teacher.model.encoder.state_dict()
    held = result.model.teacher.model.state_dict()
    assert all(torch.equal(reference[k], v) for k, v in held.items())
    (tmp_path / "teacher" / "checkpoint").rename(tmp_path / "gone")  # the student loads alone
    model, cfg = load_model(result.checkpoint)
    assert type(model) is MimicReconstructMAE and model.teacher is None
    assert cfg.method.teacher_dim == 32


# --- iBOT ------------------------------------------------------------------------------------


def test_ibot_teacher_is_the_ema_of_the_student_and_never_gets_gradients():
    model = build("ibot")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    teacher_before = [p.clone() for p in model.ema_encoder.parameters()]
    model(images()).loss.backward()
    assert all(p.grad is None for p in model.ema_encoder.parameters())
    assert all(p.grad is None for p in model.ema_head.parameters())
    assert not any(p.requires_grad for p in model.ema_encoder.parameters())
    opt.step()
    # the optimiser moved the student only
    for before, p in zip(teacher_before, model.ema_encoder.parameters(), strict=True):
        assert torch.equal(before, p)
    student = list(model.encoder.parameters())
    assert any(not torch.equal(b, s) for b, s in zip(teacher_before, student, strict=True))
    progress = 0.25
    (_, _, momentum), _ = model.ema_pairs(progress)
    assert 0.99 < momentum < 1.0
    update_teachers(model, progress)  # what the loop calls after every step
    for before, s, t in zip(teacher_before, student, model.ema_encoder.parameters(), strict=True):
        torch.testing.assert_close(t, momentum * before + (1 - momentum) * s.detach())
    assert model.progress() == progress  # the teacher temperature follows it
    assert model.teacher_temp() == pytest.approx(model.settings.teacher_temp)
    update_teachers(model, 0.05)
    assert model.settings.warmup_teacher_temp < model.teacher_temp() < model.settings.teacher_temp


def test_ibot_patch_loss_covers_exactly_the_masked_tokens():
    torch.manual_seed(0)
    b, n, k = 3, 16, 8
    student, teacher = torch.randn(b, n, k), torch.randn(b, n, k)
    mask = mask_from_noise(torch.rand(b, n), 0.4)
    hidden = mask.binary

    def loss(s, t):
        return masked_patch_loss(distillation_ce(s, t, torch.zeros(1, 1, k), 0.04, 0.1), hidden)

    base = loss(student, teacher)
    visible = hidden[..., None] == 0
    noise_s, noise_t = torch.randn(b, n, k), torch.randn(b, n, k)
    same = loss(torch.where(visible, noise_s, student), torch.where(visible, noise_t, teacher))
    torch.testing.assert_close(same, base)  # visible tokens do not enter
    changed = loss(student, torch.where(visible, teacher, noise_t))
    assert not torch.allclose(changed, base)  # hidden ones do
    # and in the method: the student's visible-token scores get no gradient from the patch loss
    model = build("ibot", "method.cls_weight=0")
    scores = {}
    model.head.register_forward_hook(lambda m, i, o: scores.setdefault("student", o))
    fixed = model.draw_mask(4, "cpu", torch.Generator().manual_seed(1))
    out = model(images(), mask=fixed)
    grad = torch.autograd.grad(out.loss, scores["student"])[0]  # both crops, (2 * 4, 1 + N, K)
    per_patch = grad[:, 1:].abs().sum(-1)
    hidden = fixed.hidden  # each crop's own mask
    assert hidden.shape == per_patch.shape and not torch.equal(hidden[:4], hidden[4:])
    assert (per_patch[hidden == 0] == 0).all() and (per_patch[hidden == 1] > 0).all()
    assert (grad[:, 0] == 0).all()  # cls weight 0


def test_ibot_centres_follow_the_teacher_in_training_only():
    model = build("ibot")
    model(images())
    assert model.cls_center.abs().sum() > 0 and model.patch_center.abs().sum() > 0
    before = model.cls_center.clone()
    model.eval()
    model(images(seed=1))
    assert torch.equal(model.cls_center, before)
    with pytest.raises(ConfigError, match="cls_token"):
        tiny("ibot", "model.cls_token=false")


def test_ibot_crossed_cls_loss_pairs_each_students_crop_with_the_teachers_other_crop():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    center = torch.randn(1, 8, generator=g)

    def ce(s, t):
        return distillation_ce(s, t, center, 0.04, 0.1).mean()

    crossed = crossed_cls_loss(student, teacher, center, 0.04, 0.1)
    torch.testing.assert_close(
        crossed, (ce(student[0], teacher[1]) + ce(student[1], teacher[0])) / 2
    )
    same_crop = (ce(student[0], teacher[0]) + ce(student[1], teacher[1])) / 2
    assert not torch.allclose(crossed, same_crop)
    # three crops: the six ordered pairs of different crops; one crop: the same-view loss
    three = torch.randn(3, 5, 8, generator=g), torch.randn(3, 5, 8, generator=g)
    pairs = [ce(three[0][v], three[1][q]) for v in range(3) for q in range(3) if v != q]
    torch.testing.assert_close(crossed_cls_loss(*three, center, 0.04, 0.1), sum(pairs) / 6)
    one = crossed_cls_loss(student[:1], teacher[:1], center, 0.04, 0.1)
    torch.testing.assert_close(one, ce(student[0], teacher[0]))


def test_ibot_cls_target_of_each_crop_is_the_teachers_output_on_the_other_crop():
    model = build("ibot", "method.patch_weight=0").eval()  # eval: the centre stays put
    x = images()
    crops = model.draw_mask(4, "cpu", torch.Generator().manual_seed(2))
    seen = {}
    model.ema_encoder.register_forward_hook(lambda m, i, o: seen.update(teacher_in=i[0]))
    model.ema_head.register_forward_hook(lambda m, i, o: seen.update(teacher=o))
    model.head.register_forward_hook(lambda m, i, o: seen.update(student=o))
    center, temp = model.cls_center.clone(), model.teacher_temp()
    loss = model(x, mask=crops).loss
    views = model.global_views(x, crops)
    assert torch.equal(seen["teacher_in"], views)  # the teacher sees the crops, unmasked
    student, teacher = seen["student"][:, 0], seen["teacher"][:, 0]  # crop-major: A then B

    def ce(s, t):
        return distillation_ce(s, t, center, temp, model.settings.student_temp).mean()

    a, b = slice(0, 4), slice(4, 8)
    crossed = (ce(student[a], teacher[b]) + ce(student[b], teacher[a])) / 2
    torch.testing.assert_close(loss, crossed)
    uncrossed = (ce(student[a], teacher[a]) + ce(student[b], teacher[b])) / 2
    assert (loss - uncrossed).abs() > 1e-4
    # and the student's cls of crop A learns only from the teacher's output on crop B
    model.ema_head.register_forward_hook(lambda m, i, o: o.index_fill(0, torch.arange(4), 0.0))
    moved_a = model(x, mask=crops).loss  # the teacher's scores of crop A replaced
    torch.testing.assert_close(
        moved_a, (ce(student[a], teacher[b]) + ce(student[b], torch.zeros_like(teacher[a]))) / 2
    )


def test_ibot_crops_differ_and_are_cut_from_the_image():
    model = build("ibot")
    x = images()
    crops = model.draw_mask(4, "cpu", torch.Generator().manual_seed(0))
    assert crops.theta.shape == (2, 4, 2, 3) and len(crops.masks) == 2
    views = model.global_views(x, crops)
    assert views.shape == (8, 1, 28, 28)
    for i in range(4):  # each image's two crops: different places, different pixels and masks
        assert not torch.allclose(crops.theta[0, i], crops.theta[1, i])
        assert (views[i] - views[4 + i]).abs().mean() > 0.05
    assert not torch.equal(crops.masks[0].binary, crops.masks[1].binary)
    rows = crops.select(slice(1, 3))  # a process's rows: the same crops and masks of its items
    assert torch.equal(rows.theta, crops.theta[:, 1:3])
    assert torch.equal(rows.hidden, torch.cat([m.binary[1:3] for m in crops.masks]))
    # whole-image "crops" give the image back: the views are of the image handed in
    whole = build(
        "ibot", "method.global_crops_scale=[1,1]", "method.global_crops_ratio=[1,1]",
        "method.global_crops_hflip=false",
    )  # fmt: skip
    same = whole.global_views(x, whole.draw_mask(4, "cpu", torch.Generator().manual_seed(0)))
    torch.testing.assert_close(same, torch.cat([x, x]), atol=1e-5, rtol=0)


def test_ibot_one_global_crop_is_the_single_view_loss():
    model = build(
        "ibot", "method.global_crops=1", "method.global_crops_scale=[1,1]",
        "method.global_crops_ratio=[1,1]", "method.global_crops_hflip=false",
    )  # fmt: skip
    x = images()
    crops = model.draw_mask(4, "cpu", torch.Generator().manual_seed(3))
    assert crops.theta.shape == (1, 4, 2, 3)
    hidden = crops.hidden
    s = model.settings
    # the former single-view loss, spelled out: masked view vs the same view whole
    student = model.head(model.encode_masked(x, hidden))
    teacher = model.ema_head(model.ema_encoder(x))
    tt = model.teacher_temp()
    cls = distillation_ce(student[:, 0], teacher[:, 0], model.cls_center, tt, s.student_temp)
    patches = distillation_ce(student[:, 1:], teacher[:, 1:], model.patch_center, tt, 0.1)
    expected = cls.mean() + masked_patch_loss(patches, hidden)
    torch.testing.assert_close(model(x, mask=crops).loss, expected, atol=1e-5, rtol=1e-5)


def test_ibot_preset_resumes_bit_exact_with_two_crops(tmp_path):
    small = ("method.out_dim=64", "method.head_hidden_dim=32", "method.head_bottleneck_dim=16")
    straight = short_run(tmp_path, PRESETS["ibot"][0], "straight", *small)
    short_run(tmp_path, PRESETS["ibot"][0], "resumed", *small, "train.max_steps=1")
    resumed = short_run(tmp_path, PRESETS["ibot"][0], "resumed", *small)
    assert straight.steps == resumed.steps == 2 and straight.cfg.method.global_crops == 2
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "override, field",
    [
        ("method.global_crops=0", "global_crops"),
        ("method.global_crops_scale=[0,1]", "global_crops_scale"),
        ("method.global_crops_scale=[0.5]", "global_crops_scale"),
        ("method.global_crops_ratio=[2,1]", "global_crops_ratio"),
        ("model.img_size=[4,28,28]", "img_size"),
    ],
)
def test_ibot_refuses_crop_settings_that_cannot_work(override, field):
    with pytest.raises(ConfigError, match=field):
        tiny("ibot", override)


# --- HPM -------------------------------------------------------------------------------------


def test_hardest_hidden_hides_the_top_predicted_and_keeps_the_rest_of_the_draw():
    drawn = mask_from_noise(torch.rand(5, 16, generator=torch.Generator().manual_seed(0)), 0.75)
    predicted = torch.rand(5, 16, generator=torch.Generator().manual_seed(1))
    assert hardest_hidden(predicted, drawn, 0) is drawn
    hard = hardest_hidden(predicted, drawn, 6)
    assert hard.ids_keep.shape == drawn.ids_keep.shape
    top = predicted.topk(6, dim=1).indices
    assert (hard.binary.gather(1, top) == 1).all()
    # the other hidden patches are the draw's: drawn-hidden ones first
    extra = hard.binary.bool() & ~torch.zeros_like(hard.binary).scatter(1, top, 1).bool()
    assert (drawn.binary[extra] == 1).all()


def test_hardest_hidden_keeps_the_draws_order_under_bfloat16_predictions():
    """Bug: the draw's ranks were cast to the predictions' dtype; in bfloat16 ranks above 256
    tie, and the patch given up for a hard one was any of the tied ones."""
    n = 576  # 384 px at 16 px patches
    drawn = mask_from_noise(torch.rand(8, n, generator=torch.Generator().manual_seed(0)), 0.5)
    keep = drawn.ids_keep.shape[1]
    hard_patch = drawn.ids_keep[:, :1]  # a visible patch of the draw, predicted hardest
    predicted = torch.zeros(8, n, dtype=torch.bfloat16).scatter(1, hard_patch, 1.0)
    hard = hardest_hidden(predicted, drawn, 1)
    expected = drawn.binary.scatter(1, hard_patch, 1.0)
    expected.scatter_(1, drawn.ids_masked[:, :1], 0.0)  # the first-ranked hidden one gives way
    assert drawn.ids_restore.gather(1, drawn.ids_masked[:, :1]).eq(keep).all()
    assert torch.equal(hard.binary, expected)


def test_hpm_masks_move_toward_higher_predicted_loss_as_training_progresses():
    model = build("hpm")
    x = images(8)
    drawn = model.draw_mask(8, "cpu", torch.Generator().manual_seed(3))
    predicted = model.predict_losses(x)  # the EMA copy's view of the whole image

    def hidden_predicted(mask: Mask) -> float:
        return float((predicted * mask.binary).sum() / mask.binary.sum())

    shares = []
    for progress in (0.0, 0.5, 1.0):
        update_teachers(model, progress)  # the loop's after-step call sets the schedule
        mask = model.harden(x, drawn)
        shares.append(hidden_predicted(mask))
        if progress == 0.0:
            assert torch.equal(mask.ids_keep, drawn.ids_keep)  # easy start: the random draw
    assert shares[0] < shares[1] < shares[2]
    hard = int(drawn.ids_masked.shape[1] * model.settings.hard_share_end)
    assert (mask.binary.gather(1, predicted.topk(hard, dim=1).indices) == 1).all()
    # and training uses it: forward in training hides the hard patches, in eval the given mask
    out = model(x, mask=drawn)
    assert torch.equal(out.mask.ids_restore, mask.ids_restore)
    assert model.eval()(x, mask=drawn).mask is drawn


def test_hpm_loss_predictor_learns_the_order_of_the_reconstruction_losses():
    actual = torch.tensor([[0.1, 0.5, 0.3, 0.9]])
    right, wrong = ranking_loss(actual * 100, actual), ranking_loss(-actual * 100, actual)
    assert right < 0.01 and wrong > 5
    torch.testing.assert_close(ranking_loss(actual * 100 + 7, actual), right)  # order, not size
    model = build("hpm")
    out = model(images())
    out.loss.backward()
    assert model.loss_predictor.pred.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.ema_loss_predictor.parameters())


def test_hpm_schedule_is_saved_with_the_method():
    model = build("hpm")
    update_teachers(model, 0.4)
    again = build("hpm")
    again.load_state_dict(model.state_dict())
    assert again.progress() == pytest.approx(0.4)


# --- CAE -------------------------------------------------------------------------------------


def test_cae_alignment_target_is_the_stop_gradient_encoder_latents_of_hidden_patches():
    model = build("cae")
    x = images()
    mask = model.draw_mask(4, "cpu", torch.Generator().manual_seed(0))
    target = model.latent_target(x, mask)
    assert not target.requires_grad  # no gradient, though the encoder's weights want one
    with torch.no_grad():  # the encoder itself, shown the hidden patches alone
        tokens = model.encoder(x, mask.ids_masked)[:, model.encoder.num_prefix_tokens :]
        torch.testing.assert_close(target, model.to_regressor(tokens))
    # visible pixels do not reach the target; hidden pixels do
    visible = (mask.binary == 0).view(4, 1, 4, 1, 4, 1).expand(4, 1, 4, 7, 4, 7).reshape(x.shape)
    torch.testing.assert_close(model.latent_target(torch.where(visible, 5.0, x), mask), target)
    assert not torch.allclose(model.latent_target(torch.where(visible, x, 5.0), mask), target)
    # the predicted latents come from the visible patches only
    pred = model.regress(x, mask)
    torch.testing.assert_close(model.regress(torch.where(visible, x, 5.0), mask), pred)
    assert pred.shape == target.shape == (4, mask.ids_masked.shape[1], 16)
    # with reconstruction switched off, the loss's gradient still reaches the encoder, through
    # the prediction side only
    model.zero_grad()
    only_align = nn.functional.mse_loss(model.regress(x, mask), target)
    only_align.backward()
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_cae_decoder_reads_predicted_latents_only():
    model = build("cae")
    x = images()
    mask = model.draw_mask(4, "cpu", torch.Generator().manual_seed(0))
    out = model(x, mask=mask)
    assert out.pred.shape == (4, mask.ids_masked.shape[1], 49)
    assert torch.equal(out.predicted, mask.ids_masked)
    torch.testing.assert_close(model.decode(model.regress(x, mask), mask), out.pred)


# --- MR-MAE ----------------------------------------------------------------------------------


def test_mrmae_mimic_covers_exactly_the_visible_tokens_and_pixels_the_hidden():
    model = build("mrmae", "method.teacher=somewhere")
    x = images()
    mask = model.draw_mask(4, "cpu", torch.Generator().manual_seed(0))
    full = model.teacher(x)[:, model.teacher.model.num_prefix_tokens :]
    target = model.mimic_target(x, mask)
    expected = take_tokens(full, mask.ids_keep)
    torch.testing.assert_close(target, nn.functional.layer_norm(expected, expected.shape[-1:]))
    # the teacher's features at hidden positions do not enter the loss ...
    base = model(x, mask=mask).loss
    real = model.teacher.model.forward

    def hidden_changed(images):
        out = real(images).clone()
        out[:, 1:][mask.binary == 1] = torch.randn(int(mask.binary.sum()), out.shape[-1])
        return out

    model.teacher.model.forward = hidden_changed
    torch.testing.assert_close(model(x, mask=mask).loss, base)
    model.teacher.model.forward = lambda images: (
        real(images) + torch.randn(4, 17, 32)
    )  # ... visible do
    assert not torch.allclose(model(x, mask=mask).loss, base)
    model.teacher.model.forward = real
    # the pixel loss covers hidden patches only: predictions at visible ones get no gradient
    out = model(x, mask=mask)
    pixel_part = out.loss - model.settings.mimic_weight * nn.functional.mse_loss(
        model.mimic_head(model.encoder(x, mask.ids_keep)[:, 1:]).float(), target
    )
    grad = torch.autograd.grad(pixel_part, out.pred, retain_graph=True)[0].abs().sum(-1)
    assert (grad[mask.binary == 0] == 0).all() and (grad[mask.binary == 1] > 0).all()


def test_mrmae_needs_a_teacher_of_the_same_grid():
    with pytest.raises(ConfigError, match="method.teacher"):
        tiny("mrmae", "method.teacher=null")
    cfg = tiny("mrmae")
    other = load_config("configs/fmnist_mae_tiny.yaml", ["model.patch_size=4"]).model
    with pytest.raises(ConfigError, match="patch grid"):
        MimicReconstructMAE(cfg.model, cfg.masking, cfg.method, VisionTransformer(other))
    assert isinstance(EMATeacher, type)


# --- DMAE ------------------------------------------------------------------------------------


def vit_b16_geometry(**kw):
    """ViT-B/16's patch grid at 224 px (196 patches) at a width a CPU test can afford."""
    from mimkit.models import ModelConfig
    from mimkit.models.config import resolve_model_config

    base = dict(img_size=224, in_chans=3, patch_size=16, embed_dim=32, depth=4, num_heads=2,
                decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)  # fmt: skip
    return resolve_model_config(ModelConfig(**{**base, **kw}))


@pytest.mark.parametrize("ratio, visible", [(0.948, 10), (0.979, 4)])
def test_dmae_runs_with_10_or_4_visible_patches_at_vit_b16_224(ratio, visible):
    from mimkit.masking import MaskingConfig
    from mimkit.objectives.dmae import DistilledMAE, DMAESettings

    torch.manual_seed(0)
    teacher = VisionTransformer(vit_b16_geometry(embed_dim=48, depth=8, num_heads=3))
    cfg = vit_b16_geometry()
    model = DistilledMAE(cfg, MaskingConfig(ratio=ratio), DMAESettings(teacher="t"), teacher)
    assert model.settings.teacher_dim == 48 and model.settings.teacher_block == 6  # 3/4 of 8
    assert model.student_block == 3  # 3/4 of 4
    x = torch.randn(2, 3, 224, 224)
    mask = model.draw_mask(2, "cpu", torch.Generator().manual_seed(0))
    assert mask.ids_keep.shape == (2, visible)
    out = model(x, mask=mask)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())
    # the teacher's features are its 6th block's output on the same visible patches
    with torch.no_grad():
        _, blocks = teacher(x, mask.ids_keep, return_hidden=True)
    torch.testing.assert_close(model.teacher_features(x, mask), blocks[6])
    assert blocks[6].shape == (2, 1 + visible, 48)


def test_dmae_student_reloads_without_its_teacher():
    from mimkit.objectives import build_method

    cfg = load_config("configs/fmnist_dmae_tiny.yaml", ["method.teacher_dim=96"])
    model = build_method(cfg.model, cfg.masking, cfg.method)  # no loader: the teacher is gone
    assert model.teacher is None and model.projection.out_features == 96
    with pytest.raises(ConfigError, match="teacher"):
        model(torch.randn(2, 1, 28, 28))
    with pytest.raises(ConfigError, match="student_block"):
        load_config("configs/fmnist_dmae_tiny.yaml", ["method.student_block=7"])


def test_dmae_preset_distils_a_teacher_and_reloads(tmp_path):
    from mimkit.objectives.dmae import DistilledMAE

    teacher = short_run(tmp_path, "configs/fmnist_mae_vit12.yaml", "teacher", "model.patch_size=4")
    result = short_run(
        tmp_path, "configs/fmnist_dmae_tiny.yaml", "student", "model.patch_size=4",
        f"method.teacher={teacher.checkpoint}",
    )  # fmt: skip
    assert type(result.model) is DistilledMAE and result.cfg.method.teacher_block == 2
    model, cfg = load_model(result.checkpoint)
    assert type(model) is DistilledMAE and cfg.method == result.cfg.method


# --- DropPos ---------------------------------------------------------------------------------


def test_droppos_targets_are_the_true_positions_of_exactly_the_dropped_tokens():
    model = build("droppos", "method.sigma=0", "method.attentive=false")
    x = images()
    mask = model.draw_mask(4, "cpu", torch.Generator().manual_seed(0))
    visible = mask.patches.ids_keep.shape[1]
    assert visible == 4 and int(mask.dropped[0].sum()) == 3  # 75% of 16, then 75% of 4
    target = model.position_targets(mask.patches)
    assert torch.equal(target.argmax(-1), mask.patches.ids_keep)  # the true positions
    assert torch.equal(target.sum(-1), torch.ones(4, visible))
    out = model(x, mask=mask)
    grad = torch.autograd.grad(out.loss, out.pred)[0].abs().sum(-1)  # (B, K)
    assert ((grad > 0) == mask.dropped.bool()).all()  # the loss covers exactly the dropped ones
    # the dropped tokens enter with the position mask token, the others with their own position
    enc = model.encoder
    tokens = take_tokens(enc.patch_embed(x), mask.patches.ids_keep)
    with torch.no_grad():
        h = model.encode_dropped(x, mask)[:, 1:]
        drop = mask.dropped.bool()
        expected = tokens + torch.where(
            drop[..., None],
            model.mask_pos_token,
            take_tokens(enc.pos_embed[:, 1:].expand(4, -1, -1), mask.patches.ids_keep),
        )
        manual = enc.norm(nn.Sequential(*enc.blocks)(enc.with_prefix(expected)))[:, 1:]
    torch.testing.assert_close(h, manual)


def test_droppos_smoothing_shrinks_to_exact_positions_over_training():
    table = smoothing_map((4, 4), 1.0)
    assert table[5].argmax() == 5 and 0 < table[5, 6] < table[5, 5] and table[5, 15] < table[5, 6]
    torch.testing.assert_close(table.sum(1), torch.ones(16))
    assert torch.equal(smoothing_map((4, 4), 0.0), torch.eye(16))
    model = build("droppos")
    patches = model.draw_mask(2, "cpu", torch.Generator().manual_seed(0)).patches
    start = model.position_targets(patches).max(-1).values
    update_teachers(model, 1.0)  # the end of training: sigma 0
    assert torch.equal(model.position_targets(patches).max(-1).values, torch.ones(2, 4))
    assert (start < 1).all()


def test_droppos_attentive_weights_follow_the_cls_similarity():
    model = build("droppos")
    x = images()
    mask = model.draw_mask(4, "cpu", torch.Generator().manual_seed(0))
    weights = model.attention_weights(x, mask.patches)
    torch.testing.assert_close(weights.sum(1), torch.full((4,), 4.0))
    tokens = model.encoder(x)
    sim = nn.functional.cosine_similarity(tokens[:, :1], tokens[:, 1:], dim=-1)
    order = torch.gather(sim, 1, mask.patches.ids_keep).argsort(1)
    assert torch.equal(weights.argsort(1), order)
