"""The official MAE code's checkpoints (facebookresearch/mae `models_mae.py`).

A `.pth` file holding `{"model": state_dict}` (training checkpoints add `optimizer`, `epoch`
and an argparse `args`). The encoder uses timm's names at the top level; the decoder, when
present (the "visualize" files and training checkpoints), is `decoder_embed`, `mask_token`,
`decoder_pos_embed`, `decoder_blocks.N.*`, `decoder_norm`, `decoder_pred`. Encoder-only
release files ("pretrain") hold the encoder alone. Loaded only with weights_only=True.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mimkit.errors import CheckpointError
from mimkit.interop.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImportedModel,
    count_blocks,
    guess_num_heads,
)
from mimkit.interop.safe_load import load_pickle_safely, read_tensor_file, unwrap_state_dict
from mimkit.interop.timm import infer_model_config, timm_to_mimkit
from mimkit.masking import MaskingConfig
from mimkit.models.config import resolve_model_config
from mimkit.objectives.mae import MAESettings

log = logging.getLogger(__name__)

OFFICIAL_EPS = 1e-6  # models_mae.py: norm_layer=partial(nn.LayerNorm, eps=1e-6)
_DECODER_TOP = {
    "decoder_embed.": "decoder.embed.",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.pos_embed",
    "decoder_blocks.": "decoder.blocks.",
    "decoder_norm.": "decoder.norm.",
    "decoder_pred.": "decoder.pred.",
}


def is_decoder_key(key: str) -> bool:
    return key == "mask_token" or key.startswith("decoder_")


def official_to_mimkit(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Official names -> mimkit `encoder.*` and `decoder.*`."""
    encoder = {k: v for k, v in state.items() if not is_decoder_key(k)}
    out = timm_to_mimkit(encoder, where)
    for key, value in state.items():
        if not is_decoder_key(key):
            continue
        for old, new in _DECODER_TOP.items():
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            raise CheckpointError(f"{where}: decoder weight {key!r} has no mimkit counterpart")
    return out


def mimkit_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mimkit names -> official names (used to write test files and for round trips)."""
    out = {}
    for key, value in state.items():
        if key.startswith("encoder."):
            out[key[len("encoder.") :]] = value
            continue
        for old, new in _DECODER_TOP.items():
            if key.startswith(new):
                out[old + key[len(new) :]] = value
                break
    return out


def read_official(path: Path) -> ImportedModel:
    """An official MAE `.pth` (encoder-only or full; or the same names in safetensors)."""
    # the same names may also come as safetensors, which needs no unpickling
    obj = read_tensor_file(path) if path.suffix == ".safetensors" else load_pickle_safely(path)
    args = (
        vars(obj["args"]) if isinstance(obj, dict) and hasattr(obj.get("args"), "__dict__") else {}
    )
    where = str(path)
    state = official_to_mimkit(unwrap_state_dict(obj, where), where)
    notes: list[str] = []
    model = infer_model_config(state, {}, where, notes)
    model.layer_norm_eps = OFFICIAL_EPS
    has_decoder = "decoder.embed.weight" in state
    if has_decoder:
        dec_dim = state["decoder.embed.weight"].shape[0]
        model.decoder_embed_dim = dec_dim
        model.decoder_depth = count_blocks(state, "decoder.blocks.")
        if dec_dim % 16 == 0:
            model.decoder_num_heads = 16
            notes.append("decoder: 16 heads assumed (the official MAE decoder)")
        else:
            model.decoder_num_heads = guess_num_heads(dec_dim, "decoder", notes)
    settings = MAESettings(norm_pix_loss=bool(args.get("norm_pix_loss", False)))
    if has_decoder and "norm_pix_loss" not in args:
        notes.append(
            "norm_pix_loss=false assumed (the official visualize checkpoints predict raw "
            "pixels); override with method.norm_pix_loss=true"
        )
    masking = MaskingConfig(ratio=float(args.get("mask_ratio", 0.75)))
    model = resolve_model_config(model)
    return ImportedModel(
        state,
        model,
        "mae",
        str(path),
        has_decoder,
        IMAGENET_MEAN,
        IMAGENET_STD,
        notes,
        masking,
        settings,
    )
