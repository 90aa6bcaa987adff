"""Vision Transformer encoder, MAE decoder and their presets."""

from mimkit.models.config import PRESETS, ModelConfig, resolve_model_config
from mimkit.models.vit import VisionTransformer

__all__ = ["PRESETS", "ModelConfig", "VisionTransformer", "resolve_model_config"]
