"""Hugging Face `VideoMAEForPreTraining` weights -> a mimkit VideoMAE (`MaskedAutoencoder`).

VideoMAE is our MAE with config options, not another model: no cls token, the 1-D index
sin-cos table (`pos_embed: sincos_index`), tube masking, per-channel cube targets
(`target_norm: channel`). Its attention has separate q/k/v projections and no key bias; a key
bias only adds a per-query constant to the attention logits, which softmax ignores, so a zero
key bias in our fused `qkv` reproduces it exactly. `encoder_to_decoder` has no bias either, so
our decoder's `embed.bias` is set to zero.

Use `use_mean_pooling=False` on the HF side (the pretraining encoder with a final LayerNorm,
as the original VideoMAE). HF's decoder-head LayerNorm always uses eps 1e-5; ours uses
`layer_norm_eps` everywhere, so conversions are exact when that is 1e-5 and differ in the last
digits otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from mimkit.errors import ConfigError
from mimkit.masking import MaskingConfig
from mimkit.models.config import ModelConfig, resolve_model_config
from mimkit.models.pos_embed import position_table
from mimkit.objectives.mae import MAESettings


def model_config_from_hf(hf: Any) -> ModelConfig:
    """The mimkit model config equivalent to a transformers `VideoMAEConfig`."""
    ratio = hf.intermediate_size / hf.hidden_size
    if hf.decoder_intermediate_size / hf.decoder_hidden_size != ratio:
        raise ConfigError(
            "VideoMAE config: encoder and decoder MLP ratios differ "
            f"({ratio} vs {hf.decoder_intermediate_size / hf.decoder_hidden_size}); "
            "mimkit uses one model.mlp_ratio for both"
        )
    if getattr(hf, "use_mean_pooling", True):
        raise ConfigError(
            "VideoMAE config: use_mean_pooling=True drops the encoder's final LayerNorm; "
            "convert a pretraining config with use_mean_pooling=False"
        )
    size = hf.image_size if isinstance(hf.image_size, int) else hf.image_size[0]
    return resolve_model_config(
        ModelConfig(
            img_size=[hf.num_frames, size, size],
            in_chans=hf.num_channels,
            patch_size=hf.patch_size,
            tubelet_size=hf.tubelet_size,
            embed_dim=hf.hidden_size,
            depth=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads,
            mlp_ratio=ratio,
            qkv_bias=True,
            layer_norm_eps=hf.layer_norm_eps,
            cls_token=False,
            pos_embed="sincos_index",
            pool="avg",
            decoder_embed_dim=hf.decoder_hidden_size,
            decoder_depth=hf.decoder_num_hidden_layers,
            decoder_num_heads=hf.decoder_num_attention_heads,
        )
    )


def videomae_method(hf: Any) -> tuple[MaskingConfig, MAESettings]:
    """VideoMAE's masking (tubes, 90%) and target (per-channel cube norm-pix)."""
    return MaskingConfig(strategy="tube", ratio=0.9), MAESettings(
        norm_pix_loss=hf.norm_pix_loss, target_norm="channel"
    )


def _block(sd: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    attn = f"{src}.attention.attention"
    q_w, k_w, v_w = (sd[f"{attn}.{n}.weight"] for n in ("query", "key", "value"))
    dim = q_w.shape[0]
    q_b = sd.get(f"{attn}.query.bias", torch.zeros(dim))
    v_b = sd.get(f"{attn}.value.bias", torch.zeros(dim))
    return {
        f"{dst}.norm1.weight": sd[f"{src}.layernorm_before.weight"],
        f"{dst}.norm1.bias": sd[f"{src}.layernorm_before.bias"],
        f"{dst}.attn.qkv.weight": torch.cat([q_w, k_w, v_w]),
        f"{dst}.attn.qkv.bias": torch.cat([q_b, torch.zeros(dim), v_b]),
        f"{dst}.attn.proj.weight": sd[f"{src}.attention.output.dense.weight"],
        f"{dst}.attn.proj.bias": sd[f"{src}.attention.output.dense.bias"],
        f"{dst}.norm2.weight": sd[f"{src}.layernorm_after.weight"],
        f"{dst}.norm2.bias": sd[f"{src}.layernorm_after.bias"],
        f"{dst}.mlp.fc1.weight": sd[f"{src}.intermediate.dense.weight"],
        f"{dst}.mlp.fc1.bias": sd[f"{src}.intermediate.dense.bias"],
        f"{dst}.mlp.fc2.weight": sd[f"{src}.output.dense.weight"],
        f"{dst}.mlp.fc2.bias": sd[f"{src}.output.dense.bias"],
    }


def convert_hf_videomae(
    state_dict: dict[str, torch.Tensor], cfg: ModelConfig
) -> dict[str, torch.Tensor]:
    """Our state dict (encoder.*, decoder.*) from a `VideoMAEForPreTraining` state dict.

    Position tables are fixed buffers, not in HF's state dict: they are built from `cfg`.
    """
    sd = state_dict
    emb = "videomae.embeddings.patch_embeddings.projection"
    grid = cfg.grid_shape
    out = {
        "encoder.pos_embed": position_table(cfg.pos_embed, cfg.embed_dim, grid, cfg.cls_token),
        "decoder.pos_embed": position_table(
            cfg.pos_embed, cfg.decoder_embed_dim, grid, cfg.cls_token
        ),
        "encoder.patch_embed.proj.weight": sd[f"{emb}.weight"],
        "encoder.patch_embed.proj.bias": sd[f"{emb}.bias"],
        "encoder.norm.weight": sd["videomae.layernorm.weight"],
        "encoder.norm.bias": sd["videomae.layernorm.bias"],
        "decoder.embed.weight": sd["encoder_to_decoder.weight"],
        "decoder.embed.bias": torch.zeros(sd["encoder_to_decoder.weight"].shape[0]),
        "decoder.mask_token": sd["mask_token"],
        "decoder.norm.weight": sd["decoder.norm.weight"],
        "decoder.norm.bias": sd["decoder.norm.bias"],
        "decoder.pred.weight": sd["decoder.head.weight"],
        "decoder.pred.bias": sd["decoder.head.bias"],
    }
    for i in range(cfg.depth):
        out.update(_block(sd, f"videomae.encoder.layer.{i}", f"encoder.blocks.{i}"))
    for i in range(cfg.decoder_depth):
        out.update(_block(sd, f"decoder.decoder_layers.{i}", f"decoder.blocks.{i}"))
    return out
