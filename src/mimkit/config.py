"""Typed run configuration: dataclasses, YAML files and dotted `key=value` overrides.

A config is just values. Unknown keys and values of the wrong type are refused with the dotted
name of the field and what it expects, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mimkit.data.config import DataConfig
from mimkit.errors import ConfigError
from mimkit.models.registry import ModelConfig, resolve_model_config


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
    amp: str = "auto"  # auto (bf16 on supporting GPUs, off on CPU) | bf16 | fp16 | off
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_nonfinite: int = 10  # halt after this many skipped non-finite steps
    log_every: int = 20  # steps between metrics.jsonl lines
    save_every: int = 1  # epochs between checkpoints (always saved at the end)
    max_steps: int | None = None  # stop after this many optimiser steps (for tests and smoke runs)
    progress: bool = True
    compile: str | bool = "auto"  # torch.compile the model: auto (on with CUDA) | true | false
    activation_checkpointing: bool = False  # recompute block activations in backward (big models)
    parallel: str = "ddp"  # with several torchrun processes: ddp | fsdp (shards params per block)


@dataclass
class EvalConfig:
    """What `pretrain` reports when it finishes."""

    knn: bool = True
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_train_limit: int | None = None  # size of the kNN bank; None: the whole training split
    compare_random_init: bool = True
    reconstruction_images: int = 8


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out_dir: str = "runs/mae"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting only the lossless cases (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, where)
    else:  # pragma: no cover - only reached by a new annotation kind
        raise ConfigError(f"{where}: unsupported field type {tp}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


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
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


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
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    where = str(path) if path is not None else "config"
    try:
        cfg = _build(RunConfig, tree)
        cfg.model = resolve_model_config(cfg.model)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def config_from_dict(tree: dict[str, Any], where: str = "config") -> RunConfig:
    try:
        return _build(RunConfig, tree)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
