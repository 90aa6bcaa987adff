"""Model FLOPs of one MAE training step, the numerator of model-FLOPs utilisation (MFU).

Counted per image, matrix multiplications only (LayerNorm, softmax, GELU and the loss are
ignored, as in the PaLM/nanoGPT MFU convention), one multiply-add = 2 FLOPs:

    block(n tokens, width w)  = 2·n·w²·(4 + 2·mlp_ratio)      qkv (3w²), proj (w²), MLP (2·r·w²)
                              + 4·n²·w                          QKᵀ and attention·V
    encoder  = 2·K·P·d                                          patch embedding of the K visible patches
             + depth × block(K + 1, d)                          visible patches + cls token
    decoder  = 2·(K + 1)·d·d_dec                                encoder -> decoder projection
             + dec_depth × block(N + 1, d_dec)                  all N patches + cls token
             + 2·N·d_dec·P                                      pixel prediction
    train step = 3 × (encoder + decoder)                        backward costs twice the forward

with N patches, K = int(N·(1 - mask_ratio)) visible, P = patch²·channels pixels per patch.
These are the FLOPs the method needs: work an implementation does beyond them (our patch
embedding runs on all N patches before the gather, HF's on all of them too) is not counted, so
MFU compares implementations fairly.
"""

from __future__ import annotations

from mimkit.masking import num_kept
from mimkit.models.config import ModelConfig, resolve_model_config


def block_flops(tokens: int, width: int, mlp_ratio: float) -> float:
    """Forward FLOPs of one pre-norm transformer block on `tokens` tokens."""
    return 2 * tokens * width**2 * (4 + 2 * mlp_ratio) + 4 * tokens**2 * width


def mae_flops_per_image(cfg: ModelConfig, mask_ratio: float = 0.75) -> dict[str, float]:
    """Forward FLOPs of encoder and decoder, and the training-step total, for one image."""
    cfg = resolve_model_config(cfg)
    n = cfg.num_patches
    k = num_kept(n, mask_ratio)
    pixels = cfg.patch_size**2 * cfg.in_chans
    d, dd = cfg.embed_dim, cfg.decoder_embed_dim
    encoder = 2 * k * pixels * d + cfg.depth * block_flops(k + 1, d, cfg.mlp_ratio)
    decoder = (
        2 * (k + 1) * d * dd
        + cfg.decoder_depth * block_flops(n + 1, dd, cfg.mlp_ratio)
        + 2 * n * dd * pixels
    )
    return {"encoder_fwd": encoder, "decoder_fwd": decoder, "train_step": 3 * (encoder + decoder)}


def mfu(images_per_s: float, flops_per_image: float, peak_flops: float | None) -> float | None:
    """Achieved model FLOP/s as a fraction of the hardware peak (None when the peak is unknown)."""
    if not peak_flops:
        return None
    return images_per_s * flops_per_image / peak_flops


def vit_block_flops(attn_tokens, mlp_tokens, width: int, attn_width: int, mlp_hidden: int):
    """Forward FLOPs of one block whose attention sees `attn_tokens` tokens and whose MLP sees
    `mlp_tokens` (fewer when tokens are pruned or merged between the two, as ToMe and DiffRate
    do), with `attn_width` = heads x head width and `mlp_hidden` MLP units (smaller in a
    structurally pruned block). Plain arithmetic, so tensors with gradients pass through.
    With attn_tokens = mlp_tokens, attn_width = width and mlp_hidden = mlp_ratio·width it is
    `block_flops`."""
    attention = 2 * attn_tokens * width * attn_width * 4 + 4 * attn_tokens**2 * attn_width
    return attention + 2 * mlp_tokens * width * mlp_hidden * 2


def encoder_inference_flops(
    cfg: ModelConfig, attn_tokens: list | None = None, mlp_tokens: list | None = None
) -> float:
    """Forward FLOPs of the encoder on one whole image (no mask): patch embedding of all N
    patches, then every block at its own heads and MLP width (`cfg.heads_per_block()`,
    `cfg.mlp_hidden_per_block()`). Tokens per block default to N + prefix tokens throughout;
    token reduction passes what each block's attention and MLP see."""
    cfg = resolve_model_config(cfg)
    n = cfg.num_patches + (1 if cfg.cls_token else 0)
    d = cfg.embed_dim
    head_dim = d // cfg.num_heads
    attn_tokens = attn_tokens if attn_tokens is not None else [n] * cfg.depth
    mlp_tokens = mlp_tokens if mlp_tokens is not None else attn_tokens
    total = 2 * cfg.num_patches * cfg.patch_dim * d
    for na, nm, heads, hidden in zip(
        attn_tokens, mlp_tokens, cfg.heads_per_block(), cfg.mlp_hidden_per_block(), strict=True
    ):
        total = total + vit_block_flops(na, nm, d, heads * head_dim, hidden)
    return total
