"""transformers' `ViTMAEForPreTraining` at exactly a mimkit model's configuration."""

from __future__ import annotations

from torch import nn

from mimkit.interop.hf import model_config_to_hf_config
from mimkit.masking import MaskingConfig
from mimkit.models.config import ModelConfig, resolve_model_config
from mimkit.objectives.mae import MAESettings


def build_hf_mae(
    cfg: ModelConfig,
    masking: MaskingConfig | None = None,
    settings: MAESettings | None = None,
    attn_implementation: str = "sdpa",
) -> nn.Module:
    """The same widths, depths, heads, patch, decoder, mask ratio and norm-pix loss as `cfg`."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining  # optional dependency: mimkit[hf]

    fields = model_config_to_hf_config(resolve_model_config(cfg), "pretraining", masking, settings)
    fields.pop("model_type")  # a class attribute of ViTMAEConfig, not an argument
    hf_cfg = ViTMAEConfig(**fields)
    return ViTMAEForPreTraining._from_config(hf_cfg, attn_implementation=attn_implementation)
