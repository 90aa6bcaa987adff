"""`model.init_from=PATH`: a new pretraining run that starts from existing weights.

The source is any checkpoint `mimkit import` reads (a mimkit run or checkpoint, a Hugging Face
ViTMAE/ViT folder, an official MAE `.pth`, a timm file or folder), its format detected the same
way. The run takes the source's architecture (width, depth, heads, patch, decoder, class token,
position-table kind, channels) and keeps its own image size, drop-path rate, masking, method,
data and training settings (and its decoder size when the source has no decoder); a different patch grid resamples the position tables (the fixed
sin-cos table regenerated, a learned one interpolated, loudly). Every field where the run's
config and the source disagree, and every assumption the reader made, is written to
`RUN/source.json`. The optimiser and schedule start fresh: this is domain-adaptive
pretraining, not a resume (see `mimkit.train.start`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

from mimkit.config import RunConfig, resolve_run_config
from mimkit.errors import ConfigError
from mimkit.interop.common import adapt_to_grid
from mimkit.interop.convert import detect_format, read_source
from mimkit.models.config import ModelConfig
from mimkit.train.checkpoint import check_weights
from mimkit.train.start import InitialWeights

# what a run keeps from its own model section; every other field is the source's architecture
RUN_MODEL_FIELDS = ("img_size", "drop_path_rate", "init_from")
DECODER_FIELDS = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")


def resolve_init_from(cfg: RunConfig) -> tuple[RunConfig, InitialWeights]:
    """The run config with the source's architecture, and the source's weights at its grid."""
    src = Path(str(cfg.model.init_from))
    where = f"model.init_from {src}"
    fmt = detect_format(src)
    imported, source_run = read_source(src, fmt)
    check_weights(imported.state, str(src))  # NaN or integer weights never reach a run
    source = imported.model
    if len(source.input_size) != len(cfg.model.input_size):
        raise ConfigError(
            f"{where}: a {len(source.input_size)}-D model (image size {list(source.input_size)}) "
            f"cannot start a run with model.img_size {cfg.model.img_size}"
        )
    # a source without a decoder leaves the fresh decoder's size to the run
    own = RUN_MODEL_FIELDS if imported.has_decoder else RUN_MODEL_FIELDS + DECODER_FIELDS
    model = replace(source, **{name: getattr(cfg.model, name) for name in own})
    notes = list(imported.notes) + _differences(cfg.model, model, own)
    run = resolve_run_config(replace(cfg, model=model), where)
    run.data.check_fits(run.model.in_chans, len(run.model.input_size))
    notes += _setting_notes(cfg, imported, source_run)
    state = adapt_to_grid(imported.state, source, run.model)
    record = {
        "source": str(src),
        "format": fmt,
        "started": "a new run from these weights: fresh optimiser, schedule and step count",
        "encoder": "imported",
        "decoder": "imported" if imported.has_decoder else "freshly initialised (source has none)",
        "source_image_size": list(source.input_size),
        "image_size": list(run.model.input_size),
        "position_tables": _tables_note(source, run.model),
        "assumptions": notes,
    }
    return run, InitialWeights(state, str(src), record)


def _differences(asked: ModelConfig, used: ModelConfig, own: tuple[str, ...]) -> list[str]:
    """The architecture fields where the run's config said otherwise than the source."""
    notes = []
    for f in dataclasses.fields(ModelConfig):
        if f.name in own or f.name == "preset":
            continue
        mine, theirs = getattr(asked, f.name), getattr(used, f.name)
        if mine is not None and mine != theirs:
            notes.append(f"model.{f.name} {theirs} from the source (the run's config said {mine})")
    return notes


def _setting_notes(cfg: RunConfig, imported, source_run: RunConfig | None) -> list[str]:
    """Where the run's own masking, target and normalisation differ from what the source was
    trained with (known for HF and mimkit sources, and a timm/HF normalisation)."""
    notes = []
    if imported.mean is not None and list(imported.mean) != list(cfg.data.mean):
        notes.append(
            f"data.mean/std {cfg.data.mean}/{cfg.data.std} from the run (the source was trained "
            f"with {list(imported.mean)}/{list(imported.std or [])})"
        )
    recorded = source_run or (
        RunConfig(masking=imported.masking, method=imported.settings) if imported.fmt == "hf" else None
    )
    if recorded is None:
        return notes
    if recorded.masking.ratio != cfg.masking.ratio:
        notes.append(
            f"masking.ratio {cfg.masking.ratio} from the run (the source used {recorded.masking.ratio})"
        )
    if recorded.method.name != cfg.method.name:
        notes.append(f"method {cfg.method.name} from the run (the source's was {recorded.method.name})")
    else:
        mine, theirs = dataclasses.asdict(cfg.method), dataclasses.asdict(recorded.method)
        for key in sorted(k for k in mine if mine[k] != theirs.get(k)):
            notes.append(f"method.{key} {mine[key]} from the run (the source's was {theirs.get(key)})")
    return notes


def _tables_note(old: ModelConfig, new: ModelConfig) -> str:
    if old.grid_shape == new.grid_shape:
        return f"as the source (grid {list(new.grid_shape)})"
    return (
        f"resampled from grid {list(old.grid_shape)} to {list(new.grid_shape)} "
        "(sin-cos regenerated, learned tables interpolated)"
    )
