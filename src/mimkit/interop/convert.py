"""`mimkit import` and `mimkit export`: find the format, convert, write, say what was assumed.

Import always produces a normal mimkit checkpoint folder (model.safetensors + config.yaml, no
training state) plus `source.json` recording where the weights came from, whether the decoder
was imported or freshly initialised, and every assumption made. Dotted overrides
(`model.img_size=448`, `model.num_heads=16`, `data.mean=[...]`) apply before the model is
built; a new image size interpolates the position embeddings, with a warning in the log.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mimkit.config import RunConfig, config_from_dict, config_to_dict, parse_override
from mimkit.errors import CheckpointError, ConfigError
from mimkit.interop.common import ImportedModel, model_from_imported
from mimkit.interop.hf import read_hf_folder, write_hf_folder
from mimkit.interop.official_mae import read_official
from mimkit.interop.safe_load import PICKLE_SUFFIXES, safetensors_keys
from mimkit.interop.timm import read_timm, write_timm
from mimkit.models.alibi import AlibiViT
from mimkit.objectives.base import MaskedMethod
from mimkit.train.checkpoint import (
    MODEL_FILE,
    check_weights,
    load_config_file,
    load_model,
    read_weights,
    resolve_checkpoint_dir,
    save_checkpoint,
)

log = logging.getLogger(__name__)

IMPORT_FORMATS = ("hf", "timm", "mae", "mimkit")
EXPORT_FORMATS = ("hf", "timm", "safetensors")
SOURCE_FILE = "source.json"


def detect_format(path: Path) -> str:
    """Guess the format of a folder or file from its config files and parameter names."""
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    return _folder_format(path) if path.is_dir() else _file_format(path)


def _folder_format(path: Path) -> str:
    """'mimkit' by its config.yaml, 'hf' or 'timm' by what its config.json says."""
    if (path / "config.yaml").is_file() or (path / "checkpoint" / "config.yaml").is_file():
        return "mimkit"
    config = path / "config.json"
    if config.is_file():
        try:
            tree = json.loads(config.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{config}: not valid JSON ({exc})") from exc
        if tree.get("model_type") in ("vit_mae", "vit"):
            return "hf"
        if "architecture" in tree:
            return "timm"
    raise CheckpointError(
        f"{path}: cannot tell the format (no config.yaml, HF or timm config.json); "
        f"name it with --from {{{','.join(IMPORT_FORMATS)}}}"
    )


def _file_format(path: Path) -> str:
    """'mae' or 'timm' for a single weights file, by its suffix and parameter names."""
    if path.suffix != ".safetensors" and path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: unknown file type {path.suffix!r}; expected a folder, .safetensors or "
            f"one of {', '.join(PICKLE_SUFFIXES)}"
        )
    if path.suffix in PICKLE_SUFFIXES:
        return "mae"  # timm names + optional decoder_*; read_official handles both, never twice
    keys = safetensors_keys(path)
    if any(k.startswith(("vit.", "embeddings.")) for k in keys):
        raise CheckpointError(
            f"{path}: Hugging Face weights need their config.json: import the folder instead"
        )
    if any(k.startswith("decoder_") or k == "mask_token" for k in keys):
        return "mae"
    if "cls_token" in keys and any(k.startswith("blocks.") for k in keys):
        return "timm"
    raise CheckpointError(f"{path}: parameter names match no known ViT layout")


def read_source(path: Path, fmt: str) -> tuple[ImportedModel, RunConfig | None]:
    """Read weights in `fmt`; for a mimkit source also return its whole run config."""
    if fmt == "hf":
        if not path.is_dir():
            raise CheckpointError(f"{path}: Hugging Face import needs the save_pretrained folder")
        return read_hf_folder(path), None
    if fmt == "timm":
        return read_timm(path), None
    if fmt == "mae":
        return read_official(path), None
    if fmt == "mimkit":
        folder = resolve_checkpoint_dir(path)
        run = load_config_file(folder)
        state = read_weights(folder / MODEL_FILE)
        has_decoder = any(k.startswith("decoder.") for k in state)
        imported = ImportedModel(state, run.model, "mimkit", str(folder), has_decoder)
        return imported, run
    raise CheckpointError(f"--from {fmt!r}: expected one of {', '.join(IMPORT_FORMATS)}")


def _apply_overrides(run: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    tree = config_to_dict(run)
    for text in overrides:
        key, value = parse_override(text)
        section, _, name = key.rpartition(".")
        section = section or "model"
        if section not in ("model", "masking", "method", "data") or not name:
            raise ConfigError(
                f"override {text!r}: import takes model.*, masking.*, method.* and data.* keys only"
            )
        tree[section][name] = value
    return config_from_dict(tree, "import overrides")


def refuse_existing(out: Path) -> None:
    """Never write over something: a run's checkpoint or another export may live there."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out}: already exists and is not empty; choose a new folder")


@dataclass
class Loaded:
    """A foreign checkpoint as a ready mimkit model, with what was assumed on the way."""

    model: MaskedMethod
    run: RunConfig
    fmt: str
    has_decoder: bool
    notes: list[str]
    source_image_hw: tuple[int, int]


@dataclass
class ImportResult:
    out: Path
    fmt: str
    has_decoder: bool
    notes: list[str]
    run: RunConfig


def load_foreign(
    src: str | Path, fmt: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Loaded:
    """Any supported checkpoint -> an in-memory MaskedAutoencoder (eval mode, CPU), e.g.
    `load_foreign("vit-mae-base", overrides=["model.img_size=448"]).model`."""
    src = Path(src)
    fmt = fmt or detect_format(src)
    imported, run = read_source(src, fmt)
    check_weights(imported.state, str(src))  # NaN or integer weights never go further
    if run is None:
        run = RunConfig(model=imported.model, masking=imported.masking, method=imported.settings)
        if imported.mean is not None and imported.std is not None:
            run.data.mean, run.data.std = list(imported.mean), list(imported.std)
    run = _apply_overrides(run, overrides)
    if any(parse_override(text)[0] == "model.num_heads" for text in overrides):
        # the user gave the head count: no note may say the preset's was assumed
        imported.notes[:] = [n for n in imported.notes if " heads assumed " not in n]
        imported.notes.append(f"{run.model.num_heads} heads from the model.num_heads override")
    for note in imported.notes:
        log.info("%s: %s", src, note)
    model = model_from_imported(imported, run)
    return Loaded(model, run, fmt, imported.has_decoder, imported.notes, imported.model.image_hw)


def import_checkpoint(
    src: str | Path,
    out: str | Path,
    fmt: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> ImportResult:
    """Convert `src` into a mimkit checkpoint folder at `out` (plus source.json)."""
    out = Path(out)
    refuse_existing(out)
    loaded = load_foreign(src, fmt, overrides)
    if loaded.fmt != "mimkit":
        loaded.run.out_dir = str(out)
    save_checkpoint(out, loaded.model, loaded.run)
    record = {
        "source": str(src),
        "format": loaded.fmt,
        "decoder": "imported" if loaded.has_decoder else "freshly initialised (source has none)",
        "source_image_size": list(loaded.source_image_hw),
        "image_size": list(loaded.run.model.image_hw),
        "assumptions": loaded.notes,
        "overrides": list(overrides),
    }
    (out / SOURCE_FILE).write_text(json.dumps(record, indent=1))
    return ImportResult(out, loaded.fmt, loaded.has_decoder, loaded.notes, loaded.run)


def refuse_unrepresentable(
    run: RunConfig, to: str, where: str | Path, encoder: nn.Module | None = None
) -> None:
    """One line when the target format cannot hold this encoder: transformers' ViTMAE/ViT and
    timm's VisionTransformer are 2-D image models with a position table and a class token
    (an ALiBi `encoder` has neither: its positions are attention biases)."""
    if to not in ("hf", "timm"):
        return
    target = "transformers' ViTMAE/ViT" if to == "hf" else "timm's VisionTransformer"
    m = run.model
    if isinstance(encoder, AlibiViT):
        raise CheckpointError(
            f"{where}: this encoder uses ALiBi attention biases for positions (method "
            f"{run.method.name!r}); it has no position table and no class token, which "
            f"{target} needs, and cannot hold the biases; export it with --to safetensors "
            "(a mimkit checkpoint) or --to onnx (features at the trained image size)"
        )
    if len(m.input_size) != 2:
        kind = "video" if run.data.source == "video" else "video/volume"
        raise CheckpointError(
            f"{where}: a {kind} encoder (model.img_size {list(m.input_size)}, 3-D patches) cannot "
            f"be written as {target}, which is 2-D only; use --to safetensors"
        )
    if not m.cls_token:
        raise CheckpointError(
            f"{where}: model.cls_token is false but {target} always has a class token; "
            "use --to safetensors"
        )
    if m.block_heads or m.block_mlp_hidden:
        raise CheckpointError(
            f"{where}: a structurally pruned encoder (model.block_heads / block_mlp_hidden: "
            f"per-block sizes) cannot be written as {target}, whose blocks are all one size; "
            "use --to safetensors"
        )


def encoder_stats(model: nn.Module, run: RunConfig) -> tuple[list[float], list[float]]:
    """(mean, std) the exported encoder's pixels are normalised with: `data.mean/std`, or for
    samples with several inputs (`data.source: multi`) those of the input the method's
    `encoder` reads (`encoder_input`: MultiMAE's and CROMA's first, CroCo's masked view)."""
    name = getattr(model, "encoder_input", None)
    if run.data.source == "multi" and name in run.data.inputs:
        return run.data.inputs[name].mean, run.data.inputs[name].std
    return run.data.mean, run.data.std


def export_checkpoint(
    checkpoint: str | Path, to: str, out: str | Path, hf_arch: str = "pretraining"
) -> Path:
    """Write a mimkit checkpoint as a HF folder, a timm folder or weights-only safetensors.

    Refused in one line when the target cannot represent the encoder (3-D inputs, no class
    token, ALiBi position biases). For samples with several inputs the recorded mean/std are
    those of the input the method's encoder reads (`encoder_stats`). The feature pooling (`model.pool`) travels: timm's global_pool, and a
    `mimkit_features` entry in HF's config.json; `mimkit import` reads both back."""
    out = Path(out)
    refuse_existing(out)
    model, run = load_model(checkpoint)
    refuse_unrepresentable(run, to, checkpoint, model.encoder)
    state = model.state_dict()
    mean, std = encoder_stats(model, run)
    if to == "hf":
        if hf_arch == "pretraining" and run.method.name != "mae":
            raise CheckpointError(
                f"{checkpoint}: method {run.method.name!r} has no ViTMAEForPreTraining "
                "counterpart (only MAE's pixel decoder has one); export its encoder with "
                "--hf-arch vit or --to timm"
            )
        return write_hf_folder(state, run.model, out, mean, std, hf_arch, run.masking, run.method)
    if to == "timm":
        return write_timm(state, run.model, out, mean, std)
    if to == "safetensors":
        return save_checkpoint(out, model, run)
    raise CheckpointError(f"--to {to!r}: expected one of {', '.join(EXPORT_FORMATS)}")
