"""Typed run configuration by concern: dataclasses, YAML files and dotted `key=value` overrides.

    model:    encoder and decoder geometry (mimkit.models.config)
    masking:  what is hidden (mimkit.masking.config)
    method:   which method and its own settings (each method's file in mimkit.objectives)
    data, train, eval, out_dir

A config is just values, resolved and validated once, at load. Unknown keys and values of the
wrong type are refused with the dotted name of the field and what it expects, so a typo never
silently falls back to a default. Configs written by 0.1 (method, masking and target fields
inside `model:`) are read with those fields moved to their sections, and a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mimkit.data.config import DataConfig
from mimkit.errors import ConfigError
from mimkit.masking import MaskingConfig
from mimkit.models.config import ModelConfig, resolve_model_config
from mimkit.objectives import MAESettings, MethodSettings, settings_class
from mimkit.yamlio import load_yaml

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation: the MAE recipe (AdamW 0.9/0.95, lr = base_lr * batch / 256, warmup + cosine)."""

    epochs: int = 10
    batch_size: int = 256  # per process per micro-step; global = this x processes x accum_steps
    accum_steps: int = 1
    base_lr: float = 1.5e-4
    lr: float | None = None  # absolute learning rate; overrides base_lr scaling when set
    min_lr: float = 0.0
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float | None = None
    amp: str = "auto"  # auto (bf16 on bf16-capable GPUs and CPUs, else off) | bf16 | fp16 | off
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_nonfinite: int = 10  # halt after this many skipped non-finite steps
    log_every: int = 20  # steps between metrics.jsonl lines
    save_every: int = 1  # epochs between checkpoints (always saved at the end)
    save_every_steps: int | None = None  # also save every N optimiser steps (None: epochs only)
    max_steps: int | None = None  # stop after this many optimiser steps (for tests and smoke runs)
    progress: bool = True
    compile: str | bool = "auto"  # torch.compile the model: auto (on with CUDA) | true | false
    activation_checkpointing: bool = False  # recompute block activations in backward (big models)
    parallel: str = "ddp"  # with several torchrun processes: ddp | fsdp (shards params per block)
    loggers: list[str] = field(
        default_factory=list
    )  # trackers beside metrics.jsonl: tensorboard | wandb | mlflow

    def check(self) -> None:
        """Refuse values no run can use, naming the field (types were checked when read)."""
        _at_least(self, "train", 1, "epochs", "batch_size", "accum_steps", "max_nonfinite")
        _at_least(self, "train", 1, "log_every", "save_every", "save_every_steps", "max_steps")
        _positive(self, "train", "base_lr", "lr", "clip_grad")
        _at_least(self, "train", 0, "min_lr", "warmup_epochs", "weight_decay", "seed")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), got {self.betas}")
        _one_of(self, "train", "amp", ("auto", "bf16", "fp16", "off"))
        _one_of(self, "train", "parallel", ("ddp", "fsdp"))
        _one_of(self, "train", "compile", ("auto", True, False))
        device = self.device
        if device not in ("auto", "cpu", "cuda", "mps") and not (
            device.startswith("cuda:") and device[5:].isdigit()
        ):
            raise ConfigError(
                f"train.device must be auto, cpu, cuda, cuda:N or mps, got {device!r}"
            )


@dataclass
class EvalConfig:
    """What `pretrain` reports when it finishes."""

    knn: bool = True
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_train_limit: int | None = None  # size of the kNN bank; None: the whole training split
    compare_random_init: bool = True
    reconstruction_images: int = 8

    def check(self) -> None:
        _at_least(self, "eval", 1, "knn_k", "knn_train_limit")
        _at_least(self, "eval", 0, "reconstruction_images")
        _positive(self, "eval", "knn_temperature")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    method: MethodSettings = field(default_factory=MAESettings)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out_dir: str = "runs/mae"


def _at_least(section: Any, name: str, low: float, *fields: str) -> None:
    for key in fields:
        value = getattr(section, key)
        if value is not None and value < low:
            raise ConfigError(f"{name}.{key} must be >= {low}, got {value}")


def _positive(section: Any, name: str, *fields: str) -> None:
    for key in fields:
        value = getattr(section, key)
        if value is not None and not value > 0:
            raise ConfigError(f"{name}.{key} must be > 0, got {value}")


def _one_of(section: Any, name: str, key: str, allowed: tuple) -> None:
    value = getattr(section, key)
    if value not in allowed:
        raise ConfigError(f"{name}.{key} must be one of {list(allowed)}, got {value!r}")


def check_ranges(cfg: RunConfig) -> None:
    """Every section's values in range, and the data section against the model's geometry."""
    cfg.train.check()
    cfg.eval.check()
    cfg.data.check()
    out = Path(cfg.out_dir)
    if not cfg.out_dir or out.is_file():
        raise ConfigError(f"out_dir {cfg.out_dir!r}: is a file (or empty); expected a folder")


def check_pretraining(cfg: RunConfig) -> None:
    """What pretraining needs beyond a loadable config: something hidden to predict."""
    if cfg.masking.ratio <= 0.0:
        raise ConfigError(
            f"masking.ratio {cfg.masking.ratio} hides no patch: pretraining has nothing to "
            "predict (use e.g. 0.75)"
        )


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting only the lossless cases (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        return _coerce_mapping(value, tp, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, where)
    elif tp in _SCALARS:
        converted = _SCALARS[tp](value)
        if isinstance(converted, float) and not math.isfinite(converted):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        if converted is not _REFUSED:
            return converted
    else:  # pragma: no cover - only reached by a new annotation kind
        raise ConfigError(f"{where}: unsupported field type {tp}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _coerce_mapping(value: Any, tp: Any, where: str) -> dict[str, Any]:
    """Named sub-sections (data.inputs): string keys, each value of the annotated type."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of names to sections, got {value!r}")
    _, item_tp = typing.get_args(tp)
    empty = {} if dataclasses.is_dataclass(item_tp) else None  # `name:` alone: the defaults
    return {
        str(k): _coerce(empty if v is None else v, item_tp, f"{where}.{k}")
        for k, v in value.items()
    }


def _coerce_union(value: Any, tp: Any, where: str) -> Any:
    for option in typing.get_args(tp):
        try:
            return _coerce(value, option, where)
        except ConfigError:
            continue
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


_REFUSED = object()


def _as_float(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    return _REFUSED


_YAML11_BOOLS = {"yes": True, "y": True, "on": True, "no": False, "n": False, "off": False}


def _as_bool(value: Any) -> Any:
    """A bool, or one of YAML 1.1's boolean words, which `load_yaml` keeps as text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _YAML11_BOOLS.get(value.lower(), _REFUSED)
    return _REFUSED


# the scalar types a config field may have: each accepts exactly its own values (bool is not int)
_SCALARS: dict[Any, Any] = {
    type(None): lambda v: None if v is None else _REFUSED,
    bool: lambda v: _as_bool(v),
    int: lambda v: v if isinstance(v, int) and not isinstance(v, bool) else _REFUSED,
    float: _as_float,
    str: lambda v: v if isinstance(v, str) else _REFUSED,
}


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in known:
            raise ConfigError(f"unknown config key {where!r}; expected one of {sorted(known)}")
        kwargs[key] = _coerce(value, hints[key], where)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if child is None:  # an empty section (`radar:` alone) takes keys like `radar: {}`
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'train.epochs=3' -> ('train.epochs', 3); the value is read as YAML (so 1e-3, true, [1,2] work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.epochs=1")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


# 0.1 kept these in `model:`; they are read from there into their own sections
LEGACY_MASKING_KEYS = {"masking": "strategy", "mask_ratio": "ratio", "mask_patch": "mask_patch"}
LEGACY_METHOD_KEYS = (
    "norm_pix_loss",
    "target_norm",
    "decoder_mask_ratio",
    "predict_fraction",
    "mix_layers",
    "hog_bins",
    "teacher",
    "teacher_dim",
    "freq_radius",
)


def migrate_legacy(tree: dict[str, Any], where: str) -> dict[str, Any]:
    """Move 0.1's method, masking and target fields out of `model:` into their sections.

    Method fields the named method has no use for are dropped: 0.1 carried every method's
    fields in every config, and ignored them.
    """
    model = tree.get("model")
    if not isinstance(model, dict):
        return tree
    moved = [
        k for k in model if k in LEGACY_MASKING_KEYS or k in LEGACY_METHOD_KEYS or k == "method"
    ]
    if not moved:
        return tree
    tree, model = dict(tree), dict(model)
    masking = dict(tree.get("masking") or {})
    method = dict(tree.get("method") or {})
    if "method" in model:
        if "name" in method and method["name"] != model["method"]:
            raise ConfigError(
                f"model.method {model['method']!r} and method.name {method['name']!r} disagree"
            )
        method["name"] = model.pop("method")
    for old, new in LEGACY_MASKING_KEYS.items():
        if old in model:
            masking.setdefault(new, model.pop(old))
    known = {f.name for f in dataclasses.fields(settings_class(method.get("name", "mae")))}
    for key in LEGACY_METHOD_KEYS:
        if key in model:
            value = model.pop(key)
            if key in known:
                method.setdefault(key, value)
    log.warning(
        "%s: read 0.1 config keys %s from model: into masking: and method: (write them there)",
        where,
        ", ".join(f"model.{k}" for k in moved),
    )
    tree.update(model=model, masking=masking, method=method)
    return tree


def build_run_config(tree: dict[str, Any], where: str = "config") -> RunConfig:
    """A RunConfig from a tree of sections (0.1's flat model section migrated), not resolved."""
    tree = migrate_legacy(tree, where)
    method = tree.get("method") or {}
    if not isinstance(method, dict):
        raise ConfigError(f"{where}: method: expected a section (name: mae, ...), got {method!r}")
    rest = {k: v for k, v in tree.items() if k != "method"}
    try:
        name = method.get("name", "mae")
        settings = _build(
            settings_class(name), {k: v for k, v in method.items() if k != "name"}, "method"
        )
        cfg = _build(RunConfig, rest)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    cfg.method = settings
    return cfg


def resolve_run_config(cfg: RunConfig, where: str = "config") -> RunConfig:
    """Fill presets and check that model, masking and method fit together, once, at load.

    A config that starts from `model.init_from` and names no architecture of its own takes the
    source's: its geometry is checked when the source is read (mimkit.interop.init_from)."""
    try:
        if cfg.model.init_from is not None and not cfg.model.init_from.strip():
            raise ConfigError("model.init_from is empty; give a checkpoint path or leave it unset")
        if cfg.model.init_from is not None and cfg.model.patch_size is None:
            check_ranges(cfg)
            return cfg
        cfg.model = resolve_model_config(cfg.model)
        cfg.masking.check(cfg.model.grid_shape)
        if cfg.method.name != "mae" and len(cfg.model.input_size) != 2:
            raise ConfigError(
                f"method.name {cfg.method.name!r} is for 2-D images; clips and volumes use 'mae'"
            )
        cfg.method.check(cfg.model)
        check_ranges(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return cfg


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Read a YAML preset (or start from defaults) and apply dotted overrides, validating both."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            tree = load_yaml(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file; expected a YAML config") from None
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"{path}: not valid YAML ({first})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    where = str(path) if path is not None else "config"
    tree = migrate_legacy(tree, where)
    pairs = [parse_override(text) for text in overrides]
    pairs = [(legacy_override_key(key), value) for key, value in pairs]
    names = [value for key, value in pairs if key == "method.name"]
    section = tree.get("method") if isinstance(tree.get("method"), dict) else {}
    if names and names[-1] != section.get("name", "mae"):
        # another method: the file's method settings were for its own method
        log.info("method.name=%s: the method settings of %s are not used", names[-1], where)
        tree["method"] = {}
    for key, value in pairs:
        _set_dotted(tree, key, value)
    cfg = resolve_run_config(build_run_config(tree, where), where)
    try:  # a user's config: its data section must also feed its model
        cfg.data.check_fits(cfg.model.in_chans, len(cfg.model.input_size))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return cfg


def legacy_override_key(key: str) -> str:
    """0.1's `model.mask_ratio=...`-style override -> its key in the section it belongs to."""
    section, _, name = key.partition(".")
    if section != "model":
        return key
    if name in LEGACY_MASKING_KEYS:
        new = f"masking.{LEGACY_MASKING_KEYS[name]}"
    elif name == "method":
        new = "method.name"
    elif name in LEGACY_METHOD_KEYS:
        new = f"method.{name}"
    else:
        return key
    log.warning("override %s: a 0.1 key, read as %s (write it so)", key, new)
    return new


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as YAML-ready sections; `method:` starts with the method's name."""
    tree = dataclasses.asdict(cfg)
    tree["method"] = {"name": cfg.method.name, **tree["method"]}
    return tree


def config_from_dict(tree: dict[str, Any], where: str = "config") -> RunConfig:
    """A RunConfig from a checkpoint's config.yaml tree, migrated and resolved."""
    return resolve_run_config(build_run_config(tree, where), where)
