import torch
from conftest import tiny_method_parts

from mimkit.masking import random_masking
from mimkit.objectives.mae import build_mae, masked_mse, patch_stats
from mimkit.patches import patchify


def tiny(**kw):
    torch.manual_seed(0)
    return build_mae(*tiny_method_parts(**kw))


def test_loss_counts_only_masked_patches():
    pred = torch.randn(2, 10, 12)
    target = torch.randn(2, 10, 12)
    hidden = (torch.rand(2, 10) < 0.5).float()
    hidden[:, 0] = 1
    base = masked_mse(pred, target, hidden)
    changed = target + (1 - hidden)[..., None] * 100.0  # change visible patches only
    assert torch.allclose(masked_mse(pred, changed, hidden), base)
    pred = pred.requires_grad_()
    masked_mse(pred, target, hidden).backward()
    assert torch.all(pred.grad[hidden == 0] == 0)
    assert torch.all(pred.grad[hidden == 1].abs().sum(-1) > 0)


def test_model_loss_ignores_visible_pixels_of_target():
    model = tiny(norm_pix_loss=False)
    images = torch.randn(2, 3, 16, 16)
    mask = random_masking(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
    out = model(images, mask=mask)
    # the encoder sees visible patches, so change the decoder's target path only: compare loss
    # with the target recomputed on images whose visible patches differ
    target = model.target(images)
    hidden = mask.binary
    assert torch.allclose(out.loss, masked_mse(out.pred, target, hidden))
    assert out.pred.shape == (2, 16, 4 * 4 * 3)


def test_encoder_sees_only_visible_tokens():
    model = tiny()
    images = torch.randn(2, 3, 16, 16)
    mask = random_masking(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
    latent = model.encoder(images, mask.ids_keep)
    assert latent.shape == (2, 1 + 4, 32)
    # changing a hidden patch does not change the encoding of the visible ones
    hidden_patch = mask.ids_masked[0, 0].item()
    r, c = divmod(hidden_patch, 4)
    altered = images.clone()
    altered[0, :, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] += 5.0
    assert torch.allclose(model.encoder(altered, mask.ids_keep), latent, atol=1e-6)


def test_encode_is_deterministic_and_unmasked():
    model = tiny(drop_path_rate=0.5)
    model.train()
    images = torch.randn(3, 3, 16, 16)
    a, b = model.encode(images), model.encode(images)
    assert torch.equal(a, b)
    assert a.shape == (3, 32)
    assert model.training  # encode() restores the mode it found


def test_reconstruct_undoes_norm_pix_with_input_statistics():
    model = tiny(norm_pix_loss=True)
    images = torch.randn(2, 3, 16, 16)
    mask = random_masking(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
    # make the decoder predict the exact norm-pix target: reconstruction must equal the input
    target = model.target(images)
    model.forward = lambda x, mask=None, **_: type("O", (), {"pred": target})()
    out = model.reconstruct(images, mask)
    assert torch.allclose(out["reconstruction"], images, atol=1e-4)
    assert torch.allclose(out["pasted"], images, atol=1e-4)


def test_patch_stats_normalise_each_patch():
    patches = patchify(torch.randn(2, 3, 8, 8) * 3 + 1, 4)
    mean, std = patch_stats(patches)
    normed = (patches - mean) / std
    assert torch.allclose(normed.mean(-1), torch.zeros(2, 4), atol=1e-5)


def test_any_channel_count_and_non_square_input():
    model = tiny(in_chans=5, img_size=[8, 20], patch_size=4)
    out = model(torch.randn(2, 5, 8, 20), generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == (2, 10, 4 * 4 * 5)
    assert torch.isfinite(out.loss)
