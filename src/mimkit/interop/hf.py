"""Hugging Face transformers: ViTMAEForPreTraining, ViTMAEModel and ViTModel folders both ways.

A `save_pretrained` folder is `config.json` + `model.safetensors`. Parameter names differ by
transformers version (4.x and the Hub files: `encoder.layer.N.attention.attention.query`;
5.x modules: `layers.N.attention.q_proj`; 5.x writes the decoder as `decoder_encoder.layer.N`),
so names are first brought to one canonical spelling, then mapped by the table below. HF keeps
q, k and v as three Linear layers where mimkit (like timm) has one fused `qkv`.

Export writes the Hub layout, which every transformers version loads. The config maps both
ways: sizes, patch, channels, decoder, norm-pix, layer-norm eps (HF's default is 1e-12, ours
1e-6: the value is carried, never defaulted) and qkv bias.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from mimkit.errors import CheckpointError
from mimkit.interop.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImportedModel,
    count_blocks,
    fuse_qkv,
    preset_for,
    split_qkv,
)
from mimkit.interop.safe_load import read_tensor_file
from mimkit.masking import MaskingConfig
from mimkit.models.config import ModelConfig, resolve_model_config
from mimkit.objectives.mae import MAESettings

CONFIG_JSON = "config.json"
WEIGHTS = "model.safetensors"
PREPROCESSOR_JSON = "preprocessor_config.json"
# config.json key for mimkit's feature settings that transformers has no field for (the
# pooling of `mimkit eval` features); transformers keeps unknown keys through save_pretrained
MIMKIT_KEY = "mimkit_features"
HF_ARCHITECTURES = {"pretraining": "ViTMAEForPreTraining", "vit": "ViTModel"}

# Older/newer spellings -> the canonical (transformers 5 module) spelling.
_CANONICAL = [
    (re.compile(r"^decoder\.decoder_encoder\.layer\.(\d+)\."), r"decoder.decoder_layers.\1."),
    (re.compile(r"^(vit\.)?encoder\.layer\.(\d+)\."), r"\1layers.\2."),
    (re.compile(r"\.attention\.attention\.(query|key|value)\."), r".attention.\1."),
    (re.compile(r"\.attention\.query\."), ".attention.q_proj."),
    (re.compile(r"\.attention\.key\."), ".attention.k_proj."),
    (re.compile(r"\.attention\.value\."), ".attention.v_proj."),
    (re.compile(r"\.attention\.output\.dense\."), ".attention.o_proj."),
    (re.compile(r"\.intermediate\.dense\."), ".mlp.fc1."),
    (re.compile(r"\.output\.dense\."), ".mlp.fc2."),
]

# Canonical HF names (without the `vit.` prefix) -> mimkit names; blocks handled separately.
_ENCODER_TOP = {
    "embeddings.cls_token": "encoder.cls_token",
    "embeddings.position_embeddings": "encoder.pos_embed",
    "embeddings.patch_embeddings.projection.weight": "encoder.patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "encoder.patch_embed.proj.bias",
    "layernorm.weight": "encoder.norm.weight",
    "layernorm.bias": "encoder.norm.bias",
}
_DECODER_TOP = {
    "decoder.decoder_embed.weight": "decoder.embed.weight",
    "decoder.decoder_embed.bias": "decoder.embed.bias",
    "decoder.mask_token": "decoder.mask_token",
    "decoder.decoder_pos_embed": "decoder.pos_embed",
    "decoder.decoder_norm.weight": "decoder.norm.weight",
    "decoder.decoder_norm.bias": "decoder.norm.bias",
    "decoder.decoder_pred.weight": "decoder.pred.weight",
    "decoder.decoder_pred.bias": "decoder.pred.bias",
}
# Inside one block: HF canonical suffix -> mimkit suffix (q/k/v are fused separately).
_BLOCK = {
    "layernorm_before": "norm1",
    "attention.o_proj": "attn.proj",
    "layernorm_after": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
# HF weights that mimkit has no place for and that carry no encoder information.
_IGNORED = re.compile(r"^(pooler\.|classifier\.|embeddings\.mask_token$)")
# The Hub (and transformers 4.x) spelling of the canonical block suffixes, used on export.
_HUB_BLOCK = {
    "layernorm_before": "layernorm_before",
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
    "layernorm_after": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}


def canonical_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any transformers spelling -> canonical, with the `vit.` prefix removed."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _CANONICAL:
            key = pattern.sub(repl, key)
        out[key.removeprefix("vit.")] = value
    return out


def _blocks_to_mimkit(
    state: dict[str, torch.Tensor], hf_prefix: str, ours: str, out: dict[str, torch.Tensor]
) -> None:
    for i in range(count_blocks(state, hf_prefix)):
        src, dst = f"{hf_prefix}{i}.", f"{ours}{i}."
        for kind in ("weight", "bias"):
            qkv = [state.pop(f"{src}attention.{p}_proj.{kind}", None) for p in "qkv"]
            if all(t is not None for t in qkv):
                out[f"{dst}attn.qkv.{kind}"] = fuse_qkv(*qkv)
            elif any(t is not None for t in qkv):
                raise CheckpointError(f"{src}attention: has some of q/k/v {kind} but not all")
            for hf_name, our_name in _BLOCK.items():
                if f"{src}{hf_name}.{kind}" in state:
                    out[f"{dst}{our_name}.{kind}"] = state.pop(f"{src}{hf_name}.{kind}")


def hf_state_to_mimkit(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """HF state dict (any version's names) -> mimkit `encoder.*`/`decoder.*`; nothing left over."""
    state = canonical_names(state)
    out: dict[str, torch.Tensor] = {}
    for table in (_ENCODER_TOP, _DECODER_TOP):
        for hf_name, our_name in table.items():
            if hf_name in state:
                out[our_name] = state.pop(hf_name)
    _blocks_to_mimkit(state, "layers.", "encoder.blocks.", out)
    _blocks_to_mimkit(state, "decoder.decoder_layers.", "decoder.blocks.", out)
    leftover = sorted(k for k in state if not _IGNORED.match(k))
    if leftover:
        raise CheckpointError(
            f"{where}: {len(leftover)} weight(s) with no mimkit counterpart, e.g. {leftover[:3]}"
        )
    return out


def mimkit_state_to_hf(
    state: dict[str, torch.Tensor], arch: str = "pretraining"
) -> dict[str, torch.Tensor]:
    """mimkit state -> Hub-layout names for ViTMAEForPreTraining (`vit.` prefix, with decoder)
    or ViTModel (no prefix, encoder only)."""
    prefix = "vit." if arch == "pretraining" else ""
    inverse_top = {v: k for k, v in _ENCODER_TOP.items()}
    if arch == "pretraining":
        inverse_top.update({v: k for k, v in _DECODER_TOP.items()})
    out: dict[str, torch.Tensor] = {}
    block = re.compile(r"^(encoder|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)$")
    inverse_block = {v: k for k, v in _BLOCK.items()}
    for key, value in state.items():
        value = value.detach().contiguous()
        if key in inverse_top:
            name = inverse_top[key]
            out[name if name.startswith("decoder.") else prefix + name] = value
            continue
        m = block.match(key)
        if m is None or (m.group(1) == "decoder" and arch != "pretraining"):
            if key.startswith("encoder.") or arch == "pretraining":
                raise CheckpointError(f"mimkit weight {key!r} has no Hugging Face counterpart")
            continue
        part, idx, name, kind = m.groups()
        where = (
            f"{prefix}encoder.layer.{idx}."
            if part == "encoder"
            else f"decoder.decoder_layers.{idx}."
        )
        if name == "attn.qkv":
            for p, t in zip("qkv", split_qkv(value), strict=True):
                out[f"{where}{_HUB_BLOCK[f'attention.{p}_proj']}.{kind}"] = t
        else:
            out[f"{where}{_HUB_BLOCK[inverse_block[name]]}.{kind}"] = value
    return out


def _pair(value, name: str, where: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise CheckpointError(f"{where}: {name} must be an int or [h, w], got {value!r}")


def hf_config_to_model_config(hf: dict, where: str) -> tuple[ModelConfig, bool]:
    """config.json (vit_mae or vit) -> (resolved ModelConfig, has_decoder)."""
    model_type = hf.get("model_type")
    if model_type not in ("vit_mae", "vit"):
        raise CheckpointError(f"{where}: model_type {model_type!r}; expected 'vit_mae' or 'vit'")
    act = hf.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{where}: hidden_act {act!r}; mimkit blocks use exact 'gelu' only")
    ph, pw = _pair(hf.get("patch_size", 16), "patch_size", where)
    if ph != pw:
        raise CheckpointError(f"{where}: patch_size {ph}x{pw}; mimkit needs square patches")
    h, w = _pair(hf.get("image_size", 224), "image_size", where)
    dim = int(hf.get("hidden_size", 768))
    depth = int(hf.get("num_hidden_layers", 12))
    mlp_ratio = int(hf.get("intermediate_size", 4 * dim)) / dim
    fields = dict(
        preset=preset_for(dim, depth),
        img_size=h if h == w else [h, w],
        in_chans=int(hf.get("num_channels", 3)),
        patch_size=ph,
        embed_dim=dim,
        depth=depth,
        num_heads=int(hf.get("num_attention_heads", 12)),
        mlp_ratio=mlp_ratio,
        qkv_bias=bool(hf.get("qkv_bias", True)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        pool=str((hf.get(MIMKIT_KEY) or {}).get("pool", "cls")),
    )
    has_decoder = model_type == "vit_mae" and "ViTMAEModel" not in (hf.get("architectures") or [])
    if model_type == "vit_mae":
        dec_dim = int(hf.get("decoder_hidden_size", 512))
        dec_ratio = int(hf.get("decoder_intermediate_size", 2048)) / dec_dim
        if has_decoder and dec_ratio != mlp_ratio:
            raise CheckpointError(
                f"{where}: decoder MLP ratio {dec_ratio} differs from the encoder's {mlp_ratio}; "
                "mimkit uses one mlp_ratio for both"
            )
        fields.update(
            decoder_embed_dim=dec_dim,
            decoder_depth=int(hf.get("decoder_num_hidden_layers", 8)),
            decoder_num_heads=int(hf.get("decoder_num_attention_heads", 16)),
        )
    return resolve_model_config(ModelConfig(**fields)), has_decoder


def hf_config_to_mae(hf: dict) -> tuple[MaskingConfig, MAESettings]:
    """The masking ratio and target a ViTMAE config.json was trained with."""
    masking = MaskingConfig(ratio=float(hf.get("mask_ratio", 0.75)))
    return masking, MAESettings(norm_pix_loss=bool(hf.get("norm_pix_loss", False)))


def model_config_to_hf_config(
    cfg: ModelConfig,
    arch: str = "pretraining",
    masking: MaskingConfig | None = None,
    settings: MAESettings | None = None,
) -> dict:
    """Resolved ModelConfig (and the MAE's masking and target) -> a config.json that
    `from_pretrained` reads."""
    masking, settings = masking or MaskingConfig(), settings or MAESettings()
    h, w = cfg.image_hw
    hidden = int(cfg.embed_dim * cfg.mlp_ratio)
    out = {
        "architectures": [HF_ARCHITECTURES[arch]],
        "model_type": "vit_mae" if arch == "pretraining" else "vit",
        "hidden_size": cfg.embed_dim,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": hidden,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": cfg.layer_norm_eps,
        "image_size": h if h == w else [h, w],
        "patch_size": cfg.patch_size,
        "num_channels": cfg.in_chans,
        "qkv_bias": cfg.qkv_bias,
        "dtype": "float32",
        # what transformers has no setting for but features depend on; kept by save_pretrained
        MIMKIT_KEY: {"pool": cfg.pool},
    }
    if arch == "pretraining":
        out.update(
            decoder_hidden_size=cfg.decoder_embed_dim,
            decoder_num_hidden_layers=cfg.decoder_depth,
            decoder_num_attention_heads=cfg.decoder_num_heads,
            decoder_intermediate_size=int(cfg.decoder_embed_dim * cfg.mlp_ratio),
            mask_ratio=masking.ratio,
            norm_pix_loss=settings.norm_pix_loss,
        )
    return out


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a save_pretrained folder: one file, or shards listed in an index."""
    for name in (WEIGHTS, "pytorch_model.bin"):
        if (path / name).is_file():
            return read_tensor_file(path / name)
        index = path / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as exc:
                raise CheckpointError(f"{index}: not a weight index ({exc})") from exc
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(read_tensor_file(path / shard))
            return state
    raise CheckpointError(f"{path}: no {WEIGHTS} or pytorch_model.bin (or sharded index) found")


def read_hf_folder(path: Path) -> ImportedModel:
    """A `save_pretrained` folder (config.json + model.safetensors) -> ImportedModel."""
    config_path = path / CONFIG_JSON
    try:
        hf = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path}: cannot read Hugging Face config ({exc})") from exc
    model_cfg, has_decoder = hf_config_to_model_config(hf, str(config_path))
    state = hf_state_to_mimkit(read_hf_weights(path), str(path))
    has_decoder = has_decoder and any(k.startswith("decoder.") for k in state)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    notes = []
    if (path / PREPROCESSOR_JSON).is_file():
        proc = json.loads((path / PREPROCESSOR_JSON).read_text())
        mean, std = proc.get("image_mean", mean), proc.get("image_std", std)
    else:
        notes.append("no preprocessor_config.json: ImageNet mean/std assumed")
    if model_cfg.in_chans != 3 and len(mean) != model_cfg.in_chans:
        mean, std = None, None
    masking, settings = hf_config_to_mae(hf)
    return ImportedModel(
        state, model_cfg, "hf", str(path), has_decoder, mean, std, notes, masking, settings
    )


def write_hf_folder(
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    out: Path,
    mean: list[float],
    std: list[float],
    arch: str = "pretraining",
    masking: MaskingConfig | None = None,
    settings: MAESettings | None = None,
) -> Path:
    """Write config.json, model.safetensors and preprocessor_config.json for `from_pretrained`."""
    if arch not in HF_ARCHITECTURES:
        raise CheckpointError(f"--hf-arch {arch!r}: expected one of {sorted(HF_ARCHITECTURES)}")
    h, w = cfg.image_hw
    if arch == "pretraining" and h != w:
        raise CheckpointError(
            f"model.img_size {h}x{w}: transformers' ViTMAE builds square grids only; "
            "export the encoder with --hf-arch vit"
        )
    out.mkdir(parents=True, exist_ok=True)
    hf_state = mimkit_state_to_hf(state, arch)
    save_file(hf_state, out / WEIGHTS, metadata={"format": "pt"})
    (out / CONFIG_JSON).write_text(
        json.dumps(model_config_to_hf_config(cfg, arch, masking, settings), indent=2)
    )
    c = cfg.in_chans
    processor = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": h, "width": w},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(mean) * c if len(mean) == 1 else list(mean),
        "image_std": list(std) * c if len(std) == 1 else list(std),
    }
    (out / PREPROCESSOR_JSON).write_text(json.dumps(processor, indent=2))
    return out
