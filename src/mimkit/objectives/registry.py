"""One entry point to build any method of the family from its model config.

`model.method` names the method; the method reads its own settings (masking, mask patch,
partial-reconstruction fraction, HOG bins, teacher) from the same config, so a checkpoint's
config.yaml rebuilds exactly the model that was trained.
"""

from __future__ import annotations

from torch import nn

from mimkit.models.registry import ModelConfig, resolve_model_config


def load_teacher(path: str):
    """The frozen encoder of a teacher checkpoint (MaskAlign)."""
    from mimkit.train.checkpoint import load_model

    model, _ = load_model(path)
    return model.encoder


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model `cfg.method` asks for, with its config resolved and checked."""
    from mimkit.objectives.crossmae import CrossMAE
    from mimkit.objectives.g2sd import build_g2sd
    from mimkit.objectives.mae import MaskedAutoencoder
    from mimkit.objectives.maskalign import MaskAlign
    from mimkit.objectives.maskfeat import MaskFeat
    from mimkit.objectives.mfm import MaskedFrequencyModel
    from mimkit.objectives.simmim import SimMIM

    cfg = resolve_model_config(cfg)
    if cfg.method == "maskalign":
        return MaskAlign(cfg, load_teacher(cfg.teacher))
    builders = {
        "mae": MaskedAutoencoder,
        "simmim": SimMIM,
        "crossmae": CrossMAE,
        "maskfeat": MaskFeat,
        "mfm": MaskedFrequencyModel,
        "g2sd": build_g2sd,
    }
    return builders[cfg.method](cfg)
