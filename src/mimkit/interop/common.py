"""What every converter shares: the imported-model record, qkv fusion, head-count guesses and
building a mimkit model from converted weights (at the source's or another image size).

A converter only renames and reshapes tensors into mimkit's names (`encoder.*`, `decoder.*`)
and describes the architecture as a `ModelConfig`; everything else happens here once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from mimkit.errors import CheckpointError
from mimkit.masking import MaskingConfig
from mimkit.models.config import PRESETS, ModelConfig
from mimkit.models.pos_embed import adapt_pos_embed, is_fixed_table
from mimkit.models.vit import prefix_token_count
from mimkit.objectives.mae import MAESettings, build_mae
from mimkit.train.checkpoint import load_state_into

log = logging.getLogger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ImportedModel:
    """Weights in mimkit names plus the architecture they fit, as read from a foreign format."""

    state: dict[str, torch.Tensor]  # encoder.* (and decoder.* when the source has a decoder)
    model: ModelConfig  # resolved, at the source's own image size
    fmt: str  # hf | timm | mae | mimkit
    source: str  # the path it came from
    has_decoder: bool
    mean: list[float] | None = None  # normalisation the weights were trained with, when known
    std: list[float] | None = None
    notes: list[str] = field(default_factory=list)  # assumptions made, shown to the user
    masking: MaskingConfig = field(default_factory=MaskingConfig)  # as the source was trained
    settings: MAESettings = field(default_factory=MAESettings)  # its MAE target (norm-pix)


def split_qkv(weight_or_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """timm/mimkit fused qkv (rows [q; k; v]) -> (q, k, v)."""
    q, k, v = weight_or_bias.chunk(3, dim=0)
    return q.clone(), k.clone(), v.clone()


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(q, k, v) projections as three Linear layers -> one fused qkv tensor, rows [q; k; v]."""
    return torch.cat([q, k, v], dim=0)


def guess_num_heads(dim: int, what: str, notes: list[str]) -> int:
    """Head count is not in a state dict: take the timm preset of that width, and say so."""
    for name, (preset_dim, _, heads, _) in PRESETS.items():
        if preset_dim == dim:
            notes.append(f"{what}: {heads} heads assumed (the {name} preset for width {dim})")
            return heads
    raise CheckpointError(
        f"{what}: width {dim} matches no preset, so the head count is unknown; "
        f"give it as an override, e.g. model.num_heads=N"
    )


def preset_for(dim: int, depth: int) -> str:
    """The preset with this width and depth, else the one with this width, else vit_base."""
    for name, (d, n, _, _) in PRESETS.items():
        if d == dim and n == depth:
            return name
    for name, (d, _, _, _) in PRESETS.items():
        if d == dim:
            return name
    return "vit_base"


def count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of `prefix.N.` blocks present in a state dict."""
    ids = {int(k[len(prefix) :].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    if ids and ids != set(range(len(ids))):
        raise CheckpointError(f"blocks under {prefix!r} are not numbered 0..N-1: {sorted(ids)}")
    return len(ids)


def square_grid(num_tokens: int, where: str) -> tuple[int, int]:
    side = int(round(num_tokens**0.5))
    if side * side != num_tokens:
        raise CheckpointError(
            f"{where}: {num_tokens} patch positions is not a square grid; "
            f"give the size as an override, e.g. model.img_size=[H,W]"
        )
    return side, side


def adapt_to_grid(
    state: dict[str, torch.Tensor], old: ModelConfig, new: ModelConfig
) -> dict[str, torch.Tensor]:
    """Encoder and decoder position tables made for `new`'s patch grid: the fixed sin-cos table
    regenerated exactly, a learned one (imported) interpolated, loudly."""
    if old.grid_shape == new.grid_shape:
        return state
    keys = [key for key in ("encoder.pos_embed", "decoder.pos_embed") if key in state]
    prefix = prefix_token_count(old)
    learned = [
        key for key in keys if not is_fixed_table(state[key], old.pos_embed, old.grid_shape, prefix)
    ]
    where = f"loading at image size {new.input_size} (weights were made for {old.input_size})"
    grids = f"from grid {old.grid_shape} to {new.grid_shape}"
    if learned:
        log.warning(
            "%s: interpolating position embeddings %s (%s)", where, grids, ", ".join(learned)
        )
    else:
        log.info("%s: sin-cos position tables regenerated %s", where, grids)
    state = dict(state)
    for key in keys:
        state[key] = adapt_pos_embed(
            state[key], old.pos_embed, old.grid_shape, new.grid_shape, prefix
        )
    return state


def model_from_imported(imported: ImportedModel, run):
    """A MaskedAutoencoder holding the imported weights; without a source decoder it keeps its
    fresh initialisation (seeded), and a warning says reconstructions mean nothing yet."""
    state = adapt_to_grid(imported.state, imported.model, run.model)
    with torch.random.fork_rng(devices=[]):  # a reproducible decoder init, global RNG untouched
        torch.manual_seed(0)
        model = build_mae(run.model, run.masking, run.method)
    where = f"{imported.source} ({imported.fmt})"
    if imported.has_decoder:
        load_state_into(model, state, where)
    else:
        encoder_state = {k[len("encoder.") :]: v for k, v in state.items()}
        load_state_into(model.encoder, encoder_state, where)
        log.warning(
            "%s holds an encoder only: the MAE decoder is freshly initialised, so reconstructions "
            "are meaningless until it is trained",
            imported.source,
        )
    return model.eval()
