"""transformers' `ViTMAEForPreTraining` at exactly a mimkit model's configuration."""

from __future__ import annotations

from torch import nn

from mimkit.models.registry import ModelConfig, resolve_model_config


def build_hf_mae(cfg: ModelConfig, attn_implementation: str = "sdpa") -> nn.Module:
    """The same widths, depths, heads, patch, decoder, mask ratio and norm-pix loss as `cfg`."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    cfg = resolve_model_config(cfg)
    h, w = cfg.image_hw
    hf_cfg = ViTMAEConfig(
        image_size=h if h == w else [h, w],
        num_channels=cfg.in_chans,
        patch_size=cfg.patch_size,
        hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio),
        decoder_hidden_size=cfg.decoder_embed_dim,
        decoder_num_hidden_layers=cfg.decoder_depth,
        decoder_num_attention_heads=cfg.decoder_num_heads,
        decoder_intermediate_size=int(cfg.decoder_embed_dim * cfg.mlp_ratio),
        mask_ratio=cfg.mask_ratio,
        norm_pix_loss=cfg.norm_pix_loss,
        qkv_bias=cfg.qkv_bias,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ViTMAEForPreTraining._from_config(hf_cfg, attn_implementation=attn_implementation)
