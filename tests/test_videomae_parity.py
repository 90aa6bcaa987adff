"""VideoMAE parity: our MAE with VideoMAE's options gives transformers' loss on the same mask."""

import pytest
import torch

from mimkit.masking import mask_from_bool, tube_masking
from mimkit.objectives.mae import MaskedAutoencoder
from mimkit.train.checkpoint import load_state_into

transformers = pytest.importorskip("transformers")
from mimkit.interop.videomae import (  # noqa: E402
    convert_hf_videomae,
    model_config_from_hf,
    videomae_method,
)


def hf_pair(channels: int, norm_pix: bool, seed: int = 0):
    config = transformers.VideoMAEConfig(
        image_size=16,
        patch_size=4,
        num_channels=channels,
        num_frames=4,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
        use_mean_pooling=False,
        norm_pix_loss=norm_pix,
        layer_norm_eps=1e-5,  # HF's decoder head norm is fixed at 1e-5; ours uses one eps
    )
    torch.manual_seed(seed)
    hf = transformers.VideoMAEForPreTraining(config).eval()
    with torch.no_grad():  # random, non-trivial values for parameters HF initialises to zero
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    cfg = model_config_from_hf(config)
    ours = MaskedAutoencoder(cfg, *videomae_method(config)).eval()
    load_state_into(ours, convert_hf_videomae(hf.state_dict(), cfg), "hf videomae")
    return hf, ours


@pytest.mark.parametrize("channels", [1, 3])
def test_loss_matches_transformers_videomae(channels):
    hf, ours = hf_pair(channels, norm_pix=True)
    # the fixed position tables are the same numbers
    assert torch.allclose(ours.encoder.pos_embed, hf.videomae.embeddings.position_embeddings)
    assert torch.allclose(ours.decoder.pos_embed, hf.position_embeddings)
    gen = torch.Generator().manual_seed(1)
    clips = torch.randn(2, channels, 4, 16, 16, generator=gen)  # ours: (B, C, T, H, W)
    mask = tube_masking(2, ours.cfg.grid_shape, 0.75, generator=gen)
    hidden = mask.binary.bool()
    with torch.no_grad():
        ref = hf(clips.transpose(1, 2), bool_masked_pos=hidden)  # HF: (B, T, C, H, W)
        out = ours(clips, mask=mask_from_bool(hidden))
    assert torch.allclose(out.loss, ref.loss, rtol=0, atol=1e-5), (out.loss, ref.loss)
    # the same predictions for the hidden patches, in patch order
    ours_hidden = out.pred[hidden].reshape(2, -1, out.pred.shape[-1])
    assert torch.allclose(ours_hidden, ref.logits, atol=1e-5)


def test_parity_breaks_when_a_weight_differs():
    hf, ours = hf_pair(1, norm_pix=True)
    with torch.no_grad():
        ours.decoder.pred.bias.add_(0.1)
    clips = torch.randn(2, 1, 4, 16, 16)
    hidden = tube_masking(2, ours.cfg.grid_shape, 0.75).binary.bool()
    with torch.no_grad():
        ref = hf(clips.transpose(1, 2), bool_masked_pos=hidden)
        out = ours(clips, mask=mask_from_bool(hidden))
    assert not torch.allclose(out.loss, ref.loss, atol=1e-5)
