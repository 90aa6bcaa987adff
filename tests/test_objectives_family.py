import math

import pytest
import torch
from conftest import method_parts
from hypothesis import given, settings
from hypothesis import strategies as st

from mimkit.masking import random_masking
from mimkit.models.vit import VisionTransformer
from mimkit.objectives.crossmae import CrossMAE
from mimkit.objectives.hog import PatchHOG
from mimkit.objectives.maskalign import MaskAlign
from mimkit.objectives.maskfeat import MaskFeat
from mimkit.objectives.simmim import SimMIM


def cfg(**kw):
    base = dict(img_size=16, in_chans=1, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2)  # fmt: skip
    base.update(kw)
    return method_parts(**base)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_simmim_encoder_sees_mask_tokens_not_hidden_pixels():
    torch.manual_seed(0)
    model = SimMIM(*cfg(method="simmim", masking="random"))
    images = torch.randn(2, 1, 16, 16)
    mask = random_masking(2, 16, 0.5, generator=gen())
    tokens = model.encode_masked(images, mask.binary)
    assert tokens.shape == (2, 17, 32)  # every patch is in the sequence, plus cls
    r, c = divmod(mask.ids_masked[0, 0].item(), 4)
    altered = images.clone()
    altered[0, :, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4] += 3.0
    assert torch.allclose(model.encode_masked(altered, mask.binary), tokens, atol=1e-6)
    out = model(images, mask=mask)
    out.loss.backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0


def test_simmim_loss_is_l1_on_hidden_patches_only():
    torch.manual_seed(0)
    model = SimMIM(*cfg(method="simmim", masking="coarse", mask_patch=2))
    images = torch.randn(2, 1, 16, 16)
    out = model(images, generator=gen())
    hidden = out.mask.binary
    from mimkit.patches import patchify

    target = patchify(images, 4)
    expected = ((out.pred - target).abs().mean(-1) * hidden).sum() / hidden.sum()
    assert torch.allclose(out.loss, expected)
    groups = hidden.view(2, 2, 2, 2, 2).sum(dim=(2, 4))  # SimMIM hides whole 2x2 groups
    assert set(groups.unique().tolist()) <= {0.0, 4.0}


def test_crossmae_reconstructs_only_the_chosen_subset():
    torch.manual_seed(0)
    model = CrossMAE(*cfg(method="crossmae", predict_fraction=0.25))
    out = model(torch.randn(3, 1, 16, 16), generator=gen())
    assert out.mask.ids_masked.shape[1] == 12  # 12 of 16 hidden
    assert out.pred.shape == (3, round(16 * 0.25), 16)  # a quarter of all patches
    for row, masked in zip(out.predicted, out.mask.ids_masked, strict=True):
        assert set(row.tolist()) <= set(masked.tolist())
    out.loss.backward()
    assert model.decoder.layer_mix.grad.abs().sum() > 0  # the layer mix learns


def test_crossmae_queries_are_independent_of_each_other():
    torch.manual_seed(0)
    model = CrossMAE(*cfg(method="crossmae", predict_fraction=1.0)).eval()
    images = torch.randn(1, 1, 16, 16)
    mask = random_masking(1, 16, 0.75, generator=gen())
    out, hidden = model.encoder(images, mask.ids_keep, return_hidden=True)
    layers = [*hidden[1:-1], out]
    a, b, c = mask.ids_masked[0, :3].tolist()
    with_b = model.decoder(layers, torch.tensor([[a, b]]))
    with_c = model.decoder(layers, torch.tensor([[a, c]]))
    assert torch.allclose(with_b[0, 0], with_c[0, 0], atol=1e-6)


def test_hog_of_a_vertical_edge_votes_into_the_horizontal_gradient_bin():
    hog = PatchHOG(patch_size=8, channels=1, bins=9)
    image = torch.zeros(1, 1, 8, 16)
    image[..., 8:] = 1.0  # a vertical edge at the patch boundary: gradient along x
    feats = hog(image)
    assert feats.shape == (1, 2, 9)
    # orientations are measured from the vertical axis as the reference's (atan2(gx, gy)):
    # a gradient along x is at pi/2, the middle bin
    assert feats[0, 0].argmax() == 4 and feats[0, 1].argmax() == 4
    assert torch.allclose(feats.norm(dim=-1), torch.ones(1, 2))
    rotated = hog(image.transpose(-1, -2).contiguous())  # horizontal edge: angle 0
    assert rotated[0, 0].argmax() == int(0 / math.pi * 9)


def test_maskfeat_predicts_hog_for_hidden_patches():
    torch.manual_seed(0)
    model = MaskFeat(*cfg(method="maskfeat", hog_bins=9))
    out = model(torch.randn(2, 1, 16, 16), generator=gen())
    assert out.pred.shape == (2, 16, 9)
    assert torch.isfinite(out.loss)
    with pytest.raises(Exception, match="HOG features, not pixels"):
        model.reconstruct(torch.randn(1, 1, 16, 16), out.mask)


def test_maskalign_teacher_is_frozen():
    torch.manual_seed(0)
    teacher = VisionTransformer(cfg(embed_dim=48, num_heads=3, drop_path_rate=0.5)[0])
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    model = MaskAlign(*cfg(method="maskalign", teacher="t"), teacher).train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    images = torch.randn(4, 1, 16, 16)
    losses = []
    for step in range(5):
        out = model(images, generator=gen(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert out.pred.shape == (4, 4, 48)  # visible tokens, at the teacher's width
    assert losses[-1] < losses[0]


def test_mfm_input_lacks_exactly_the_hidden_frequencies():
    from mimkit.objectives.mfm import FrequencyMask, filter_images, hidden_frequencies

    images = torch.randn(2, 1, 16, 16)
    mask = FrequencyMask(torch.tensor([True, False]))  # sample 0 low-pass, sample 1 high-pass
    hidden = hidden_frequencies(mask, (16, 16), radius=3.0)
    assert torch.equal(hidden[0] + hidden[1], torch.ones(1, 16, 16))  # the halves partition
    assert hidden[0, 0, 0, 0] == 0 and hidden[1, 0, 0, 0] == 1  # zero frequency: low half
    spectrum = torch.fft.fft2(filter_images(images, hidden), norm="ortho")
    assert spectrum.abs()[hidden.bool()].max() < 1e-5
    original = torch.fft.fft2(images, norm="ortho")
    kept = ~hidden.bool()
    assert torch.allclose(spectrum[kept], original[kept], atol=1e-5)


def test_mfm_loss_ignores_errors_at_frequencies_the_input_kept():
    from mimkit.objectives.mfm import FrequencyMask, hidden_frequencies
    from mimkit.objectives.mfm import (
        spectrum_loss as focal_frequency_loss,
    )  # renamed: plain |error|

    torch.manual_seed(0)
    target = torch.randn(2, 1, 16, 16)
    pred = torch.randn(2, 1, 16, 16)
    hidden = hidden_frequencies(FrequencyMask(torch.tensor([True, False])), (16, 16), 3.0)
    base = focal_frequency_loss(pred, target, hidden)
    # add an error living only at kept frequencies: the loss must not move
    noise = torch.fft.fft2(torch.randn(2, 1, 16, 16), norm="ortho") * (1 - hidden)
    shifted = pred + torch.fft.ifft2(noise, norm="ortho").real
    assert torch.allclose(focal_frequency_loss(shifted, target, hidden), base, atol=1e-5)
    # and an error at hidden frequencies raises it
    noise = torch.fft.fft2(torch.randn(2, 1, 16, 16), norm="ortho") * hidden
    worse = pred + torch.fft.ifft2(noise, norm="ortho").real
    assert focal_frequency_loss(worse, target, hidden) > base
    assert focal_frequency_loss(target, target, hidden) == 0


def test_mfm_trains_its_encoder_on_whole_filtered_images():
    from mimkit.objectives.mfm import MaskedFrequencyModel

    torch.manual_seed(0)
    model = MaskedFrequencyModel(*cfg(method="mfm", freq_radius=0.2))
    images = torch.randn(4, 1, 16, 16)
    out = model(images, generator=gen())
    assert out.pred.shape == images.shape and out.mask.lowpass.shape == (4,)
    out.loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    again = model(images, generator=gen())
    assert torch.equal(again.mask.lowpass, out.mask.lowpass)  # seeded


def _teacher_mae(seed=1):
    from mimkit.objectives.mae import MaskedAutoencoder

    torch.manual_seed(seed)
    return MaskedAutoencoder(*cfg(embed_dim=48, decoder_embed_dim=24, decoder_num_heads=2))


def test_g2sd_targets_are_the_frozen_teachers_decoder_tokens_for_every_patch():
    import torch.nn.functional as F

    from mimkit.objectives.g2sd import G2SD

    teacher = _teacher_mae()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    torch.manual_seed(0)
    student = G2SD(*cfg(method="g2sd", teacher="t"), teacher).train()
    assert student.settings.teacher_dim == 24
    assert not any(k.startswith("teacher") for k in student.state_dict())  # not saved with it
    images = torch.randn(2, 1, 16, 16)
    mask = random_masking(2, 16, 0.75, generator=gen())
    target = student.target(images, mask)
    assert target.shape == (2, 16, 24)  # hidden and visible patches alike
    latent = teacher.encoder(images, mask.ids_keep)
    expected = teacher.decoder.hidden(latent, mask.ids_restore)[:, 1:]
    assert torch.allclose(target, F.layer_norm(expected, (24,)), atol=1e-6)
    out = student(images, mask=mask)
    assert out.pred.shape == (2, 16, 24)
    out.loss.backward()
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    opt.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_g2sd_student_rebuilds_without_its_teacher():
    from mimkit.errors import ConfigError
    from mimkit.objectives.g2sd import G2SD

    student = G2SD(*cfg(method="g2sd", teacher="t"), _teacher_mae())
    # what loading a checkpoint without the teacher does:
    alone = G2SD(student.cfg, student.masking, student.settings)
    alone.load_state_dict(student.state_dict())
    images = torch.randn(2, 1, 16, 16)
    assert torch.equal(alone.encode(images), student.encode(images))
    with pytest.raises(ConfigError, match="teacher"):
        alone(images, generator=gen())
    with pytest.raises(ConfigError, match="teacher_dim"):
        G2SD(*cfg(method="g2sd", teacher="missing"))


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(4, 20),
    w=st.integers(4, 20),
    radius=st.floats(0.5, 6.0),
    low=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_mfm_filter_is_real_exact_and_idempotent_for_any_shape(h, w, radius, low, seed):
    from mimkit.objectives.mfm import FrequencyMask, filter_images, hidden_frequencies

    hidden = hidden_frequencies(FrequencyMask(torch.tensor([low])), (h, w), radius)
    # the hidden set is symmetric under f -> -f, so removing it leaves a real image exactly
    flipped = torch.roll(torch.flip(hidden, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    assert torch.equal(hidden, flipped)
    images = torch.randn(1, 2, h, w, generator=torch.Generator().manual_seed(seed))
    once = filter_images(images, hidden)
    spectrum = torch.fft.fft2(once.double(), norm="ortho")
    leaked = spectrum.abs() * hidden
    assert leaked.max() < 1e-5
    assert torch.allclose(filter_images(once, hidden), once, atol=1e-5)


def test_mfm_pictures_complete_the_inputs_spectrum_with_the_prediction():
    from mimkit.objectives.mfm import MaskedFrequencyModel, hidden_frequencies

    torch.manual_seed(0)
    model = MaskedFrequencyModel(*cfg(method="mfm", freq_radius=0.2))
    images = torch.randn(3, 1, 16, 16)
    mask = model.draw_mask(len(images), images.device, gen())
    out = model.reconstruct(images, mask)
    hidden = hidden_frequencies(mask, (16, 16), model.radius).expand(-1, 1, -1, -1).bool()
    pasted = torch.fft.fft2(out["pasted"], norm="ortho")
    assert torch.allclose(pasted[~hidden], torch.fft.fft2(images, norm="ortho")[~hidden], atol=1e-4)
    pred = torch.fft.fft2(out["reconstruction"], norm="ortho")
    assert torch.allclose(pasted[hidden], pred[hidden], atol=1e-4)
    assert out["masked"].shape == images.shape


def test_mfm_lowpass_disc_at_28_holds_the_references_9_frequencies():
    # the reference hides d**2 >= r**2 in a low-pass input; r = 16/224 * 28 = 2 keeps 9, not 13
    from mimkit.objectives.mfm import centred_disc

    assert int(centred_disc((28, 28), 16 / 224 * 28, "cpu").sum()) == 9


def test_mfm_loss_is_the_plain_absolute_spectrum_error():
    from mimkit.objectives.mfm import FrequencyMask, hidden_frequencies, spectrum_loss

    torch.manual_seed(0)
    target, pred = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    hidden = hidden_frequencies(FrequencyMask(torch.tensor([True, False])), (16, 16), 3.0)
    diff = (torch.fft.fft2(pred, norm="ortho") - torch.fft.fft2(target, norm="ortho")).abs()
    expected = (diff * hidden).sum() / hidden.sum()
    assert torch.allclose(spectrum_loss(pred, target, hidden), expected)
    # doubling the error doubles the loss (no focal weights, no squaring)
    double = target + 2 * (pred - target)
    assert torch.allclose(spectrum_loss(double, target, hidden), 2 * expected, rtol=1e-5)


def test_mfm_filters_in_pixel_space_and_clamps_to_the_pixel_range():
    from mimkit.objectives.mfm import MaskedFrequencyModel

    mean, std = [0.3], [0.4]
    from mimkit.objectives.mfm import MFMSettings

    model_cfg, masking, _ = cfg(method="mfm")
    model = MaskedFrequencyModel(
        model_cfg, masking, MFMSettings(freq_radius=0.2, pixel_mean=mean, pixel_std=std)
    )
    pixels = torch.rand(4, 1, 16, 16)
    images = (pixels - 0.3) / 0.4
    mask = model.draw_mask(4, "cpu", gen())
    from mimkit.objectives.mfm import hidden_frequencies

    hidden = hidden_frequencies(mask, (16, 16), model.radius)
    seen = model.corrupt(images, hidden) * 0.4 + 0.3  # back in pixel units
    assert seen.min() >= -1e-6 and seen.max() <= 1 + 1e-6
    # a high-pass input loses the mean of the pixels, not of the normalised values
    high = (~mask.lowpass).nonzero().flatten()
    assert len(high) > 0
    expected = torch.fft.ifft2(torch.fft.fft2(pixels[high]) * (1 - hidden[high])).real.clamp(0, 1)
    assert torch.allclose(seen[high], expected, atol=1e-5)


def test_g2sd_distils_the_configured_teacher_decoder_block():
    # the authors stop the teacher's decoder at `suplayer` (4 of 8), not at its last block
    from dataclasses import replace

    import torch.nn.functional as F

    from mimkit.objectives.g2sd import G2SD

    teacher = _teacher_mae()  # 2 decoder blocks
    model_cfg, masking, settings = cfg(method="g2sd", teacher="t")
    student = G2SD(model_cfg, masking, replace(settings, teacher_block=1), teacher)
    images = torch.randn(2, 1, 16, 16)
    mask = random_masking(2, 16, 0.75, generator=gen())
    latent = teacher.encoder(images, mask.ids_keep)
    first = teacher.decoder.hidden(latent, mask.ids_restore, 1)[:, 1:]
    last = teacher.decoder.hidden(latent, mask.ids_restore)[:, 1:]
    target = student.target(images, mask)
    assert torch.allclose(target, F.layer_norm(first, (24,)), atol=1e-6)
    assert not torch.allclose(target, F.layer_norm(last, (24,)), atol=1e-3)


def test_crossmae_layer_mix_is_a_free_linear_mix_with_a_norm_per_decoder_block():
    torch.manual_seed(0)
    model = CrossMAE(*cfg(method="crossmae", predict_fraction=1.0)).eval()
    decoder = model.decoder
    assert len(decoder.mix_norms) == len(decoder.blocks)
    same = torch.randn(1, 5, 32)
    ids = torch.tensor([[0, 1]])
    with torch.no_grad():
        decoder.layer_mix.copy_(torch.tensor([1.0, -1.0]).expand_as(decoder.layer_mix))
    # weights 1 and -1 cancel two equal blocks (a softmax mix cannot): the memory is empty
    cancelled = decoder([same, same], ids)
    empty = decoder([torch.zeros(1, 5, 32), torch.zeros(1, 5, 32)], ids)
    assert torch.allclose(cancelled, empty, atol=1e-5)
    assert not torch.allclose(decoder([same, 2 * same], ids), empty, atol=1e-3)
